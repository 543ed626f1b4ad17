#!/bin/sh
# The session pod's main process (under tini), for both session images: a virtual X display,
# PulseAudio, a window manager and a terminal where the image has them, then vdi-agent, which
# checks the GPU and encoder, starts Selkies (either line), reports, and supervises it.
set -eu
Xvfb "${DISPLAY:-:0}" -screen 0 1920x1080x24 -nolisten tcp &
if command -v pulseaudio >/dev/null; then
  pulseaudio --daemonize=yes --exit-idle-time=-1 --system=false \
    -L "module-native-protocol-unix socket=${PULSE_SERVER:-/run/pulse/native} auth-anonymous=1" || true
fi
display_number="${DISPLAY#:}"
until [ -S "/tmp/.X11-unix/X${display_number}" ]; do sleep 0.2; done
if command -v openbox >/dev/null; then openbox & fi
if command -v xterm >/dev/null; then (cd "$HOME" && xterm -geometry 120x36+40+40 &) fi
exec vdi-agent run
