# The two commands: `make run` and `make test`. Everything else is here for them or for you.
CARGO ?= cargo
BIN := target/release/modelgate

.PHONY: run test build ort pyenv ctenv ct tools chromium lint validate models profiles check-metrics scenario scenarios bench fuzz faults fleet soak overload decisions clean

## run: fetch ONNX Runtime, build, and serve the demo routes.yaml on 127.0.0.1:8080
run: ort build
	./scripts/run-demo.sh

# `make test` and `make lint` build once and throw the build state away on CI: no incremental
# state (it was 4 GB of a clean clone's target/).
test lint: export CARGO_INCREMENTAL := 0

## test: fetch ONNX Runtime, the Python client environment, etcd, Prometheus and Chromium, check formatting and lints, run every test
test: ort pyenv ctenv tools chromium lint
	$(CARGO) test --locked --workspace
	@echo "target/ after the tests: $$(du -sh target | cut -f1)"

## build: release build of the gateway
build: tools
	$(CARGO) build --locked --release --bin modelgate

## ort: the pinned ONNX Runtime library into .ort/ (pip download + sha256 check)
ort:
	./scripts/fetch-ort.sh

## tools: etcd and Prometheus (tests start them on loopback) and protoc (the etcd client's build), from Debian's packages
tools:
	./scripts/fetch-tools.sh

## pyenv: the client conformance tests' Python (tritonclient, numpy, onnxruntime; pinned) in .venv/
pyenv:
	./scripts/python-env.sh

## ctenv: the continuous-training loop's Python (MLflow, scikit-learn, skl2onnx; pinned) in .venv-ct/
ctenv:
	./scripts/ct-env.sh

## ct: the CI/CT/CD loop end to end on loopback: MLflow registry, drift, retraining job, evaluate, canary (exit code = verdict)
ct: ort build ctenv
	./scripts/ct.sh

## chromium: Debian's chromium for the console's browser test (apt-get, only when /usr/bin/chromium is missing)
chromium:
	./scripts/fetch-chromium.sh

## lint: rustfmt and clippy, warnings are errors
lint: tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## validate: check routes.yaml and load every model in it
validate: ort build
	$(BIN) validate routes.yaml

## profiles: the reference profiles in models/ (breast cancer, from the holdout file) with `modelgate profile`
profiles: ort build
	$(BIN) profile --model models/breast-cancer-v1.onnx --data models/breast-cancer-holdout.json \
	    --out models/breast-cancer.profile.json

## scenario NAME=...: one end-to-end rollout scenario from loadtest/scenarios/ (exit code = outcome)
scenario: ort tools
	@test -n "$(NAME)" || { echo "usage: make scenario NAME=<$$(ls loadtest/scenarios | sed 's/.yaml//' | tr '\n' ' ')>"; exit 2; }
	$(CARGO) build --locked --release --quiet --workspace --bin modelgate --bin scenario
	./target/release/scenario $(NAME)

## scenarios: every scenario, one after the other
scenarios: ort tools
	$(CARGO) build --locked --release --quiet --workspace --bin modelgate --bin scenario
	@for s in loadtest/scenarios/*.yaml; do ./target/release/scenario $$(basename $$s .yaml) || exit 1; done

## bench: proxy overhead vs nginx/HAProxy, inference vs raw ORT/MLServer, criterion (installs what it needs)
bench: ort tools
	./scripts/bench.sh

## fuzz: each fuzz target for FUZZ_SECONDS (default 600) with cargo fuzz (needs a nightly toolchain)
fuzz:
	./scripts/fuzz.sh

## faults: upstream killed mid-load, corrupted model reload, disk full state folder, SIGKILL during state writes
faults:
	./scripts/faults.sh

## fleet: three replicas, a real etcd and Prometheus on loopback: rollback once fleet-wide, promotion, the verdict counting exactly what was sent, checks, follower promote, leader SIGKILL, etcd outage
fleet:
	./scripts/fleet.sh

## soak: SOAK_SECONDS (default 600) at 80% of the measured maximum rate, RSS and open fds sampled
soak:
	./scripts/soak.sh

## overload: twice the measured capacity; shedding keeps the p99 of accepted requests within 3x unloaded
overload:
	./scripts/overload.sh

## decisions: simulate RUNS (default 2000) rollouts per row through the real analysis; false decisions and power (SEED)
## (the malloc tunables keep the windows' large histogram copies off mmap: 2-3x faster, same numbers)
RUNS ?= 2000
SEED ?= 20261127
decisions: tools
	GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456 \
	$(CARGO) run --locked --release --quiet --bin decisions -- --runs $(RUNS) --seed $(SEED)

## check-metrics: serve the demo, drive traffic, and lint /metrics with promtool
check-metrics:
	./scripts/check-metrics.sh

## models: regenerate models/ (needs the Python packages in models/requirements.txt)
models:
	python3 models/generate.py

clean:
	$(CARGO) clean
	rm -rf .ort
