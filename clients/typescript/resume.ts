// A stock EventSource (the `eventsource` package, as a browser's) following a session's events:
// one line of JSON per event, until the session is Terminated. When the connection drops, it
// reconnects by itself and sends Last-Event-ID: tests/test_typescript_client.py cuts the first
// connection and checks that every event came once, in order.
import { EventSource } from "eventsource";
import type { components } from "./vdi-control.js";

type SessionEventOut = components["schemas"]["SessionEventOut"];
type EventType = components["schemas"]["EventType"];

const url = process.env.VDI_STREAM_URL ?? "";
const token = process.env.VDI_TOKEN ?? "";
const types: EventType[] = ["PhaseChanged", "ConditionChanged", "PodEvent", "Claimed"];

const stream = new EventSource(url, {
  fetch: (input, init) =>
    fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
});
for (const type of types) {
  stream.addEventListener(type, (message) => {
    const event: SessionEventOut = JSON.parse(message.data);
    console.log(JSON.stringify({ id: event.id, lastEventId: message.lastEventId, type: event.type }));
    if (event.type === "PhaseChanged" && event.data.to === "Terminated") {
      stream.close();
    }
  });
}
stream.onerror = (error) => {
  if (error.code !== undefined && error.code >= 400) {
    console.error(`event stream: ${error.code}`);
    process.exit(1);
  }
};
