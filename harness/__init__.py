"""The harness the tests and the benches share (neither imports the other): servers and
processes (`servers`), the private network and coturn (`network`), the control plane on a fake
cluster (`plane`), a bench database (`database`), Traefik on the fake API (`traefik`), the
streaming peers (`webrtc_sender`, GStreamer; `webrtc_receiver`, aiortc; `browser_viewer`,
headless Chromium) and the time stamp in the picture (`pixelcode`)."""
