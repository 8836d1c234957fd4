#!/usr/bin/env bash
# Runs the quickstart (the README's first command), then the login example on every store it claims (memory, redis, postgres, mongo, mysql, sqlite) and drives
# it over HTTP as the README shows: log in, a protected route, a role-guarded route, log out
# everywhere, the protected route again, each POST with the session's CSRF token (and refused
# without it or cross-site), and the Prometheus metrics. So an example command in a README
# cannot rot.
#
#   .ci/examples-smoke.sh            # REDIS_URL, DATABASE_URL, MONGODB_URL, MYSQL_URL from the environment
#                                    # (SQLite: a file of its own)
#
# Exits non-zero on the first store whose app misbehaves; prints one line per store.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build -q --example login --example quickstart --example api_client --features redis,postgres,mongo,mysql,sqlite,metrics
target=${CARGO_TARGET_DIR:-target}
bin=$target/debug/examples/login
jar=$(mktemp -d)
trap 'rm -rf "$jar"; [ -n "${app:-}" ] && kill "$app" 2>/dev/null || true' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

expect() { # expect <what> <wanted> <got>
    if [ "$2" != "$3" ]; then
        echo "examples-smoke: $store: $1: wanted '$2', got '$3'" >&2
        exit 1
    fi
}

wait_port() { # wait_port <port> <pid> <log>
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
        sleep 0.1
    done
    echo "examples-smoke: nothing listens on $1" >&2
    exit 1
}

# The README's first command: the quickstart's counter goes up in one cookie jar.
store=quickstart
port=$(free_port)
PORT=$port "$target/debug/examples/quickstart" >"$jar/quickstart.log" 2>&1 &
app=$!
wait_port "$port" "$app" "$jar/quickstart.log"
first=$(curl -s -c "$jar/q" -b "$jar/q" "http://127.0.0.1:$port/")
second=$(curl -s -c "$jar/q" -b "$jar/q" "http://127.0.0.1:$port/")
case "$second" in
    *" 2 "*) ;;
    *) echo "examples-smoke: quickstart answered '$first' then '$second'" >&2; exit 1 ;;
esac
kill "$app"; wait "$app" 2>/dev/null || true; app=
echo "examples-smoke: quickstart: ok ($first / $second)"

# The API client example: the token in x-session-token, used as a Bearer token, dead after
# logout (the README's api_client command).
store=api_client
port=$(free_port)
PORT=$port "$target/debug/examples/api_client" >"$jar/api.log" 2>&1 &
app=$!
wait_port "$port" "$app" "$jar/api.log"
api=http://127.0.0.1:$port
token=$(curl -s -D - -o /dev/null -H 'content-type: application/json' -d '{"username":"ada"}' "$api/login" \
    | tr -d '\r' | sed -n 's/^x-session-token: //p')
[ -n "$token" ] || { echo "examples-smoke: api_client: no token after login" >&2; exit 1; }
expect "GET /me with the token" '{"user":"ada"}' "$(curl -s -H "authorization: Bearer $token" "$api/me")"
expect "GET /me without" 401 "$(curl -s -o /dev/null -w '%{http_code}' "$api/me")"
expect "POST /logout" 204 "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "authorization: Bearer $token" "$api/logout")"
expect "GET /me after logout" 401 "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "$api/me")"
kill "$app"; wait "$app" 2>/dev/null || true; app=
echo "examples-smoke: api_client: ok"

# SQLite: a file of this run's own, kept across the restart below.
export SQLITE_URL="sqlite://$jar/sessions.db?mode=rwc"
for store in memory redis postgres mongo mysql sqlite; do
    port=$(free_port)
    COATCHECK_STORE=$store PORT=$port RUST_LOG=warn "$bin" >"$jar/$store.log" 2>&1 &
    app=$!
    wait_port "$port" "$app" "$jar/$store.log"
    base=http://127.0.0.1:$port
    c="$jar/$store.cookies"
    code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
    # The session's CSRF token, as the README's curl lines get it (`GET /csrf`).
    tok() { curl -s -c "$1" -b "$1" "$base/csrf" | sed -n 's/.*"csrf_token":"\([^"]*\)".*/\1/p'; }
    json=(-H 'content-type: application/json')
    expect "GET /me logged out" 401 "$(code -b "$c" "$base/me")"
    expect "POST /login without a CSRF token" 403 "$(code -c "$c" -b "$c" "${json[@]}" \
        -d '{"username":"bob","password":"builder"}' "$base/login")"
    expect "POST /login bob" 200 "$(code -c "$c" -b "$c" "${json[@]}" -H "x-csrf-token: $(tok "$c")" \
        -d '{"username":"bob","password":"builder"}' "$base/login")"
    expect "GET /me as bob" 200 "$(code -b "$c" "$base/me")"
    expect "GET /admin as bob" 403 "$(code -b "$c" "$base/admin")"
    expect "POST /login alice" 200 "$(code -c "$c" -b "$c" "${json[@]}" -H "x-csrf-token: $(tok "$c")" \
        -d '{"username":"alice","password":"wonderland"}' "$base/login")"
    expect "GET /admin as alice" 200 "$(code -b "$c" "$base/admin")"
    if [ "$store" = sqlite ]; then
        # The persistent embedded store: a restart of the app keeps alice signed in.
        kill "$app"; wait "$app" 2>/dev/null || true
        COATCHECK_STORE=$store PORT=$port RUST_LOG=warn "$bin" >>"$jar/$store.log" 2>&1 &
        app=$!
        wait_port "$port" "$app" "$jar/$store.log"
        expect "GET /admin as alice after a restart" 200 "$(code -b "$c" "$base/admin")"
    fi
    w="$jar/$store.wrong"
    expect "POST /login wrong password" 401 "$(code -c "$w" -b "$w" "${json[@]}" -H "x-csrf-token: $(tok "$w")" \
        -d '{"username":"alice","password":"nope"}' "$base/login")"
    expect "GET /sessions as alice" 200 "$(code -b "$c" "$base/sessions")"
    expect "POST /sessions/{unknown}/revoke" '{"revoked":false}' "$(curl -s -b "$c" -X POST \
        -H 'accept: application/json' -H "x-csrf-token: $(tok "$c")" \
        "$base/sessions/AAAAAAAAAAAAAAAAAAAAAA/revoke")"
    # The pages: the sign-in form (its token in a hidden field), a form login redirecting
    # to the devices page.
    f="$jar/$store.form"
    page=$(curl -s -c "$f" -b "$f" "$base/")
    ftok=$(printf '%s' "$page" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p')
    [ -n "$ftok" ] || { echo "examples-smoke: $store: no CSRF token in the sign-in form" >&2; exit 1; }
    expect "POST /login as a form" 303 "$(code -c "$f" -b "$f" \
        -d "username=bob&password=builder&csrf_token=$ftok" "$base/login")"
    expect "GET /devices as bob" 200 "$(code -b "$f" "$base/devices")"
    expect "POST /logout-all cross-site" 403 "$(code -b "$c" -X POST -H 'sec-fetch-site: cross-site' \
        -H "x-csrf-token: $(tok "$c")" "$base/logout-all")"
    expect "POST /logout-all" 200 "$(code -c "$c" -b "$c" -X POST -H "x-csrf-token: $(tok "$c")" \
        "$base/logout-all")"
    expect "GET /me after logout-all" 401 "$(code -b "$c" "$base/me")"
    # The metrics (built with --features metrics): the logins and the refusals, counted.
    for _ in $(seq 1 50); do
        metrics=$(curl -s "$base/metrics")
        case "$metrics" in *coatcheck_csrf_refused*) break ;; esac
        sleep 0.1
    done
    for name in coatcheck_sessions_logged_in coatcheck_csrf_refused db_client_operation_duration; do
        case "$metrics" in
            *"$name"*) ;;
            *) echo "examples-smoke: $store: /metrics has no $name: $metrics" >&2; exit 1 ;;
        esac
    done
    kill "$app"
    wait "$app" 2>/dev/null || true
    app=
    echo "examples-smoke: login example on $store: ok"
done

# The same examples on actix-web (coatcheck-actix, the same engine): the API client, then
# the login example on every store (`cargo run -p coatcheck-actix --example actix_login`).
# Their names differ from the axum examples': two packages' examples of one name share one
# output file, and a build of one replaced the other's binary (a CI run drove the actix
# login example through the axum one's checks).
cargo build -q -p coatcheck-actix --example actix_login --example actix_api_client
store=actix_api_client
port=$(free_port)
PORT=$port "$target/debug/examples/actix_api_client" >"$jar/actix_api.log" 2>&1 &
app=$!
wait_port "$port" "$app" "$jar/actix_api.log"
api=http://127.0.0.1:$port
token=$(curl -s -D - -o /dev/null -H 'content-type: application/json' -d '{"username":"ada"}' "$api/login" \
    | tr -d '\r' | sed -n 's/^x-session-token: //p')
[ -n "$token" ] || { echo "examples-smoke: actix api_client: no token after login" >&2; exit 1; }
expect "GET /me with the token" '{"user":"ada"}' "$(curl -s -H "authorization: Bearer $token" "$api/me")"
expect "POST /logout" 204 "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "authorization: Bearer $token" "$api/logout")"
expect "GET /me after logout" 401 "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "$api/me")"
kill "$app"; wait "$app" 2>/dev/null || true; app=
echo "examples-smoke: actix api_client: ok"

bin=$target/debug/examples/actix_login
export SQLITE_URL="sqlite://$jar/actix-sessions.db?mode=rwc"
for store in memory redis postgres mongo mysql sqlite; do
    port=$(free_port)
    COATCHECK_STORE=$store PORT=$port "$bin" >"$jar/actix_$store.log" 2>&1 &
    app=$!
    wait_port "$port" "$app" "$jar/actix_$store.log"
    base=http://127.0.0.1:$port
    c="$jar/actix_$store.cookies"
    code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
    tok() { curl -s -c "$1" -b "$1" "$base/csrf" | sed -n 's/.*"csrf_token":"\([^"]*\)".*/\1/p'; }
    json=(-H 'content-type: application/json')
    store="actix $store"
    expect "GET /me logged out" 401 "$(code -b "$c" "$base/me")"
    expect "POST /login without a CSRF token" 403 "$(code -c "$c" -b "$c" "${json[@]}" \
        -d '{"username":"bob","password":"builder"}' "$base/login")"
    expect "POST /login bob" 200 "$(code -c "$c" -b "$c" "${json[@]}" -H "x-csrf-token: $(tok "$c")" \
        -d '{"username":"bob","password":"builder"}' "$base/login")"
    expect "GET /admin as bob" 403 "$(code -b "$c" "$base/admin")"
    expect "POST /login alice" 200 "$(code -c "$c" -b "$c" "${json[@]}" -H "x-csrf-token: $(tok "$c")" \
        -d '{"username":"alice","password":"wonderland"}' "$base/login")"
    expect "GET /admin as alice" 200 "$(code -b "$c" "$base/admin")"
    expect "GET /sessions as alice" 200 "$(code -b "$c" "$base/sessions")"
    expect "POST /logout-all cross-site" 403 "$(code -b "$c" -X POST -H 'sec-fetch-site: cross-site' \
        -H "x-csrf-token: $(tok "$c")" "$base/logout-all")"
    expect "POST /logout-all" 200 "$(code -c "$c" -b "$c" -X POST -H "x-csrf-token: $(tok "$c")" \
        "$base/logout-all")"
    expect "GET /me after logout-all" 401 "$(code -b "$c" "$base/me")"
    kill "$app"; wait "$app" 2>/dev/null || true; app=
    echo "examples-smoke: $store: ok"
done
