# Helpers the scripts share: sourced (`. "$repo/scripts/lib.sh"`), never run. Bash only.

# random_hex BYTES: that many random bytes in hex (a throwaway signing key, a development key file).
random_hex() {
    head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'
}

# port_in_use PORT: true when something accepts connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_for_http URL PID SECONDS: returns once URL answers 2xx. Fails (status 1) as soon as process
# PID has exited, or when SECONDS have passed; the caller says what failed and shows its log.
wait_for_http() {
    local url=$1 pid=$2 deadline=$((SECONDS + $3))
    until curl -fs --max-time 2 "$url" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || return 1
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.005
    done
}
