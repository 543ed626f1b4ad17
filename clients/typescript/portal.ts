// A portal's use of vdi-control, typed from the service's own OpenAPI document:
//   npx openapi-typescript http://localhost:8080/openapi.json -o vdi-control.ts
// compiled with `tsc --strict` (no casts, no `any`, no non-null assertions) and run against a
// real server by tests/test_typescript_client.py. The requests are the README's examples.
import createClient from "openapi-fetch";
import { EventSource } from "eventsource";
import type { components, paths } from "./vdi-control.js";

type Session = components["schemas"]["Session"];
type SessionEventOut = components["schemas"]["SessionEventOut"];
type ProblemType = components["schemas"]["ProblemType"];
type Phase = components["schemas"]["Phase"];

const base = process.env.VDI_URL ?? "http://localhost:8080";
const token = process.env.VDI_TOKEN ?? "";
const api = createClient<paths>({ baseUrl: base, headers: { Authorization: `Bearer ${token}` } });

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`not so: ${what}`);
}

// Every problem type, handled: adding one to the API fails this switch's compile until the
// portal says what it does with it (the `never` below).
function advice(type: ProblemType): string {
  switch (type) {
    case "urn:vdi-control:problem:unauthorized":
    case "urn:vdi-control:problem:forbidden":
      return "sign in again";
    case "urn:vdi-control:problem:user-session-limit":
      return "open your running desktop";
    case "urn:vdi-control:problem:validation-failed":
    case "urn:vdi-control:problem:idempotency-key-reused":
    case "urn:vdi-control:problem:payload-too-large":
    case "urn:vdi-control:problem:unsupported-encoding":
    case "urn:vdi-control:problem:http-404":
    case "urn:vdi-control:problem:http-405":
    case "urn:vdi-control:problem:http-error":
      return "a bug in the portal";
    case "urn:vdi-control:problem:session-not-found":
    case "urn:vdi-control:problem:session-ended":
    case "urn:vdi-control:problem:template-not-found":
    case "urn:vdi-control:problem:token-not-found":
    case "urn:vdi-control:problem:share-not-found":
    case "urn:vdi-control:problem:viewer-not-found":
    case "urn:vdi-control:problem:recording-not-found":
    case "urn:vdi-control:problem:audit-session-not-found":
      return "it is gone";
    case "urn:vdi-control:problem:sharing-not-allowed":
    case "urn:vdi-control:problem:recording-not-allowed":
      return "this desktop's template does not allow it";
    case "urn:vdi-control:problem:too-many-shares":
      return "revoke a share first";
    case "urn:vdi-control:problem:recording-in-progress":
      return "stop the recording first";
    case "urn:vdi-control:problem:template-in-use":
    case "urn:vdi-control:problem:invalid-transition":
    case "urn:vdi-control:problem:session-not-started":
    case "urn:vdi-control:problem:session-not-ready":
      return "try again";
    case "urn:vdi-control:problem:too-many-requests":
    case "urn:vdi-control:problem:service-unavailable":
    case "urn:vdi-control:problem:database-unavailable":
    case "urn:vdi-control:problem:database-busy":
    case "urn:vdi-control:problem:internal-error":
      return "try again later";
    default: {
      const unhandled: never = type;
      return unhandled;
    }
  }
}

// Follow the session's event stream until it reaches one of `phases` (a stock EventSource,
// which sends Last-Event-ID by itself when it reconnects).
function untilPhase(id: string, phases: Phase[]): Promise<Phase> {
  return new Promise((resolve, reject) => {
    const stream = new EventSource(`${base}/v1/sessions/${id}/events/stream`, {
      fetch: (url, init) =>
        fetch(url, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
    });
    stream.addEventListener("PhaseChanged", (message) => {
      const event: SessionEventOut = JSON.parse(message.data);
      if (event.type !== "PhaseChanged") return; // narrowed: event.data is a PhaseChange
      if (phases.includes(event.data.to)) {
        stream.close();
        resolve(event.data.to);
      }
    });
    stream.addEventListener("PodEvent", (message) => {
      const event: SessionEventOut = JSON.parse(message.data);
      if (event.type === "PodEvent") console.log(`pod: ${event.reason} (${event.data.source})`);
    });
    // a wait for GPUs (or CPU, memory): what is short, what the cluster autoscaler said
    stream.addEventListener("CapacityChanged", (message) => {
      const event: SessionEventOut = JSON.parse(message.data);
      if (event.type !== "CapacityChanged") return;
      const waited = event.data.waited_s === null ? "" : ` after ${event.data.waited_s} s`;
      console.log(`capacity: ${event.reason} ${event.data.resources.join(", ")}${waited}`);
    });
    stream.onerror = (error) => {
      if (error.code !== undefined && error.code >= 400) {
        stream.close();
        reject(new Error(`event stream: ${error.code} ${error.message ?? ""}`));
      }
    };
  });
}

async function main(): Promise<void> {
  // PUT a minimal template: only the image; every other field takes its default
  const put = await api.PUT("/v1/templates/{name}", {
    params: { path: { name: "desktop" } },
    body: { image: "registry.example.com/vdi/session:1" },
  });
  if (put.error) throw new Error(`template: ${put.error.detail}`);
  const gpus: number = put.data.gpu; // sent always: no `?`
  const cpu: string | null = put.data.cpu;
  check(gpus === 1 && cpu === null, "the defaults are filled in");

  // Create with an Idempotency-Key, then replay it
  const create = () =>
    api.POST("/v1/sessions", {
      params: { header: { "Idempotency-Key": "first-try" } },
      body: { user: "alice", template: "desktop" },
    });
  const first = await create();
  if (first.error) throw new Error(`create: ${first.error.detail}`);
  const session: Session = first.data;
  check(first.response.headers.get("Location") === `/v1/sessions/${session.id}`, "Location");
  const replay = await create();
  if (replay.error) throw new Error(`replay: ${replay.error.detail}`);
  check(replay.data.id === session.id, "the replay is the same session");
  check(replay.response.headers.get("Idempotent-Replayed") === "true", "Idempotent-Replayed");

  // Follow the SSE stream to Running
  const reached = await untilPhase(session.id, ["Running", "Failed"]);
  check(reached === "Running", `the session is Running (it is ${reached})`);
  const running = await api.GET("/v1/sessions/{session_id}", {
    params: { path: { session_id: session.id } },
  });
  if (running.error) throw new Error(running.error.detail);
  const started = running.data.running_at;
  const provisioned = running.data.provisioned_at;
  if (started !== null && provisioned !== null) {
    const seconds = (Date.parse(started) - Date.parse(running.data.created_at)) / 1000;
    check(seconds >= 0 && Date.parse(started) >= Date.parse(provisioned), "instants in order");
    console.log(`time to desktop: ${seconds} s`);
  }

  // What the viewer needs, a keepalive, and the list page by page
  const connection = await api.GET("/v1/sessions/{session_id}/connection", {
    params: { path: { session_id: session.id } },
  });
  if (connection.error) throw new Error(connection.error.detail);
  const iceUrls: string[] = connection.data.ice_servers.flatMap((server) => server.urls);
  check(iceUrls.some((url) => url.startsWith("turn")), "a TURN server");
  const kept = await api.POST("/v1/sessions/{session_id}/keepalive", {
    params: { path: { session_id: session.id } },
  });
  if (kept.error) throw new Error(kept.error.detail);
  check(Date.parse(kept.data.idle_deadline) >= Date.parse(session.idle_deadline), "kept alive");
  const bob = await api.POST("/v1/sessions", { body: { user: "bob", template: "desktop" } });
  if (bob.error) throw new Error(bob.error.detail);
  const seen: string[] = [];
  let cursor: string | null = null;
  do {
    const page: Awaited<ReturnType<typeof listPage>> = await listPage(cursor);
    if (page.error) throw new Error(page.error.detail);
    seen.push(...page.data.items.map((item) => item.id));
    cursor = page.data.next_cursor;
  } while (cursor !== null);
  check(seen.includes(session.id) && seen.includes(bob.data.id), "both listed, one a page");

  // The 409: send the user to the desktop they have
  const again = await api.POST("/v1/sessions", { body: { user: "alice", template: "desktop" } });
  if (!again.error) throw new Error("a second session for alice");
  if (again.error.type !== "urn:vdi-control:problem:user-session-limit") {
    throw new Error(`409 expected: ${again.error.type}: ${advice(again.error.type)}`);
  }
  check(again.error.live_session_ids[0] === session.id, "the 409 names alice's session");

  // A 422 names each bad field
  const bad = await api.PUT("/v1/templates/{name}", {
    params: { path: { name: "desktop" } },
    body: { image: "registry.example.com/vdi/session:1", gpu: 99 },
  });
  if (bad.error?.type !== "urn:vdi-control:problem:validation-failed") throw new Error("422");
  const fields = bad.error.errors.map((error) => `${error.location}.${error.field}`);
  check(fields.includes("body.gpu"), `422 names body.gpu (${fields.join(", ")})`);

  // A 404
  const missing = await api.GET("/v1/sessions/{session_id}", {
    params: { path: { session_id: "6f1c0000-0000-4000-8000-000000000000" } },
  });
  check(missing.error?.type === "urn:vdi-control:problem:session-not-found", "404");
  check(missing.response.headers.get("X-Request-Id") !== null, "X-Request-Id");

  // Delete
  for (const id of [session.id, bob.data.id]) {
    const deleted = await api.DELETE("/v1/sessions/{session_id}", {
      params: { path: { session_id: id } },
    });
    if (deleted.error) throw new Error(deleted.error.detail);
    check(deleted.data.phase === "Terminating", "Terminating");
  }
  console.log("portal flow: ok");
}

function listPage(cursor: string | null) {
  return api.GET("/v1/sessions", {
    params: { query: { limit: 1, ...(cursor === null ? {} : { cursor }) } },
  });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
