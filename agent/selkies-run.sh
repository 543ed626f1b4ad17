#!/bin/sh
# Start the selkies-gstreamer server with its GStreamer build; the agent sets SELKIES_* first.
set -eu
. /opt/gstreamer/gst-env
exec selkies-gstreamer --addr=0.0.0.0 --port=8080 --web_root=/opt/gst-web "$@"
