#!/bin/bash
# Envoy's preStop hook (deployment.yaml): drains Envoy before the kubelet sends
# it SIGTERM, on which Envoy exits at once and cuts whatever is in flight.
#
#   envoy-drain.sh ADMIN_PORT MIN_SECONDS MAX_SECONDS
#
# 1. POST /drain_listeners?graceful&inboundonly on the admin port (loopback):
#    the ingress listener (traffic_direction INBOUND) starts draining. Envoy
#    runs with --drain-strategy immediate, so from now on every HTTP/1.1
#    response carries `Connection: close` and HTTP/2 clients get GOAWAY; the
#    listener still accepts for --drain-time-s (load balancers are still
#    learning that the Pod is going) and is closed after that.
# 2. Waits at least MIN_SECONDS (keep it equal to --drain-time-s), then until
#    no downstream request is active, at most MAX_SECONDS in all; then exits
#    and the kubelet sends SIGTERM.
#
# Pure bash (the Envoy image has neither curl nor wget): HTTP/1.1 over
# /dev/tcp. Never fails the hook: a preStop that fails only makes the kubelet
# log an event and send SIGTERM at once.
set -u
port=${1:-9902}
min=${2:-5}
max=${3:-20}

# admin METHOD PATH: the response (headers and body) on stdout; empty if the
# admin port does not answer within 2 s.
admin() {
    exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || return 1
    printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" "$2" >&3
    while IFS= read -r -t 2 line <&3; do printf '%s\n' "$line"; done
    exec 3<&-
}

# Active downstream requests on the ingress listener (stat prefix ingress_http),
# or nothing if Envoy does not answer.
active() {
    local line
    while IFS= read -r line; do
        if [[ $line =~ ^http\.ingress_http\.downstream_rq_active:\ ([0-9]+) ]]; then
            echo "${BASH_REMATCH[1]}"
            return
        fi
    done < <(admin GET '/stats?filter=ingress_http.downstream_rq_active')
}

start=$SECONDS
admin POST '/drain_listeners?graceful&inboundonly' >/dev/null
while ((SECONDS - start < max)); do
    if ((SECONDS - start >= min)); then
        n=$(active)
        # 0: nothing left to finish; empty: Envoy is gone or not answering.
        if [[ -z $n || $n == 0 ]]; then
            exit 0
        fi
    fi
    sleep 0.5
done
exit 0
