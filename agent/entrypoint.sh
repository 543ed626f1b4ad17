#!/bin/sh
# The session pod's main process (under tini): a virtual X display and PulseAudio for the desktop,
# then vdi-agent, which checks the GPU and encoder, reports, and supervises Selkies.
set -eu
Xvfb "${DISPLAY:-:0}" -screen 0 1920x1080x24 -nolisten tcp &
pulseaudio --daemonize=yes --exit-idle-time=-1 --system=false \
  -L "module-native-protocol-unix socket=${PULSE_SERVER:-/run/pulse/native} auth-anonymous=1" || true
display_number="${DISPLAY#:}"
until [ -S "/tmp/.X11-unix/X${display_number}" ]; do sleep 0.2; done
exec vdi-agent run
