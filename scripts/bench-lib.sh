# What scripts/bench.sh and scripts/bench-pool.sh share: ports, the static upstream and the
# modelgate route in front of it. Sourced, not run.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 1 200); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "bench: nothing listens on $1" >&2; exit 1; }

# static_upstream_conf FILE PORT [ANSWER]: an nginx config (one worker) answering every request
# on PORT with ANSWER (nginx directives; default: 200 "ok"); FILE must be an absolute path (its
# pid file goes beside it).
static_upstream_conf() {
  local answer=${3:-'return 200 "ok";'}
  cat >"$1" <<CONF
worker_processes 1; daemon off; pid $1.pid; error_log /dev/null;
events { worker_connections 8192; }
http { access_log off; server { listen 127.0.0.1:$2; location / { $answer } } }
CONF
}

# proxy_routes FILE LISTEN ADMIN UPSTREAM STATE: a modelgate routes.yaml forwarding /bench/ to
# the upstream on port UPSTREAM as /.
proxy_routes() {
  cat >"$1" <<CONF
server: {listen: "127.0.0.1:$2", admin_listen: "127.0.0.1:$3", state_dir: "$5"}
backends:
  - name: up
    upstream: {url: "http://127.0.0.1:$4"}
routes:
  - path_prefix: /bench/
    backend: up
    rewrite: /
CONF
}
