# Sightline: `make demo` and `make test` do all set-up on a fresh machine.
# The user path: `make train quantize deploy`, then `make serve`.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

CONFIG   ?= training/configs/shapes.yaml
SET      ?=
ARTIFACT ?= artifacts/latest
CIFAR    ?= ../shared/datasets/cifar10-train-jpg.tar.gz
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2

MODES    ?= --mode int8 --mode float32 --mode float16 --mode dynamic
MODELS   ?= models
PROMETHEUS_URL ?= http://127.0.0.1:9090
PREVIEW_OUT    ?= artifacts/dashboards
PORT     ?= 8500
DEMO_OUT ?= artifacts/demo
TRITON   := .venv-triton

.PHONY: install system-deps train evaluate quantize report demo test lint clean distclean \
        bench bench-train bench-quantize bench-server bench-overload bench-decode-memory bench-ab bench-processes protos deploy serve tools \
        dashboards-preview monitor-up serve-venv k8s-validate k8s-apply

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train,serve,dev]'
	rm -f $(VENV)/.installed-* && touch $@

# Debian packages the tests use: headless Chromium opens the HTML report; Prometheus (with
# promtool) scrapes a real server; Alertmanager's amtool checks the alert routing. The packages'
# own services are not wanted: tests start Prometheus themselves, on a free port.
SYSTEM_PACKAGES := chromium prometheus prometheus-alertmanager
system-deps:
	@missing=""; for tool in chromium prometheus amtool; do \
	    command -v $$tool >/dev/null || missing=yes; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	          apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); } || exit 1; \
	        for unit in prometheus prometheus-alertmanager; do \
	            { systemctl disable --now $$unit || service $$unit stop; } >/dev/null 2>&1 || true; \
	        done; \
	    else echo "system-deps: run as root or apt-get install $(SYSTEM_PACKAGES)"; fi; fi

# The gRPC stubs under serving/protos_gen/ are committed; a test fails when they are stale.
protos: install
	$(BIN)/python serving/protos_gen/generate.py

train: install
	$(BIN)/python -m training train --config $(CONFIG) $(addprefix --set ,$(SET))

evaluate: install
	$(BIN)/python -m training evaluate $(ARTIFACT)

quantize: install
	$(BIN)/python -m training quantize $(ARTIFACT) $(MODES)

report: install
	$(BIN)/python -m training report $(ARTIFACT)

# Publish the newest deployable artifact as the next version under $(MODELS)/<name>/.
deploy: install
	$(BIN)/python -m serving.repository.publish --models $(MODELS) $(if $(filter-out artifacts/latest,$(ARTIFACT)),$(ARTIFACT))

# Serve the model repository (newest version of each model) until Ctrl-C.
serve: install
	$(BIN)/python -m serving --model-repository $(MODELS) --port $(PORT)

# train -> evaluate -> quantize -> report -> deploy -> serve -> classify sample images with
# heatmaps -> stop the server.
demo: train evaluate quantize report deploy
	rm -rf $(DEMO_OUT) && $(BIN)/python -m training samples $(ARTIFACT) --out $(DEMO_OUT)/images
	$(BIN)/python -m serving --model-repository $(MODELS) --port $(PORT) --host 127.0.0.1 \
	    --drain-seconds 0 \
	    > $(DEMO_OUT)/server.log 2>&1 & echo $$! > $(DEMO_OUT)/server.pid; \
	status=0; \
	$(BIN)/sightline-classify $(DEMO_OUT)/images/*.png --target 127.0.0.1:$(PORT) --top-k 3 \
	    --wait 60 --heatmap $(DEMO_OUT)/heatmaps/heatmap.png || status=$$?; \
	kill -TERM $$(cat $(DEMO_OUT)/server.pid); wait; exit $$status
	@echo "demo: artifact $$(readlink -f $(ARTIFACT))"
	@echo "      card $(ARTIFACT)/card.json, report $(ARTIFACT)/report.html"
	@echo "      heatmaps $(DEMO_OUT)/heatmaps/, server log $(DEMO_OUT)/server.log"

# Each dashboard drawn to PNG from a live Prometheus; lists the panels with no data.
dashboards-preview: install
	$(BIN)/python monitoring/grafana/preview.py --prometheus $(PROMETHEUS_URL) \
	    --out $(PREVIEW_OUT) --minutes 10

# Prometheus (and Grafana, where installed) against `make serve` on this machine. Grafana gets a
# copy of the provisioning whose dashboard path points into this checkout, and stops with us.
GRAFANA_DIR := artifacts/grafana
monitor-up: system-deps
	mkdir -p artifacts/prometheus $(GRAFANA_DIR)/provisioning/dashboards
	cp -r monitoring/grafana/provisioning/datasources $(GRAFANA_DIR)/provisioning/
	sed 's|path: .*|path: $(CURDIR)/monitoring/grafana/dashboards|' \
	    monitoring/grafana/provisioning/dashboards/sightline.yml \
	    > $(GRAFANA_DIR)/provisioning/dashboards/sightline.yml
	@if command -v grafana-server >/dev/null; then \
	    PROMETHEUS_URL=$(PROMETHEUS_URL) GF_PATHS_PROVISIONING=$(CURDIR)/$(GRAFANA_DIR)/provisioning \
	    GF_PATHS_DATA=$(CURDIR)/$(GRAFANA_DIR)/data grafana-server --homepath /usr/share/grafana \
	    > $(GRAFANA_DIR)/grafana.log 2>&1 & grafana=$$!; \
	    echo "grafana on http://127.0.0.1:3000 (log $(GRAFANA_DIR)/grafana.log)"; \
	else echo "grafana-server not installed: use make dashboards-preview for pictures"; fi; \
	trap '[ -n "$$grafana" ] && kill $$grafana' EXIT; \
	prometheus --config.file=monitoring/prometheus/prometheus.yml \
	    --storage.tsdb.path=artifacts/prometheus --web.listen-address=127.0.0.1:9090

# Test-only tools that cannot share the main venv: tritonclient pins protobuf < 7; checkov's
# dependencies would fight the main venv's.
K8S_TOOLS := .venv-k8s
OVERLAY   ?= dev
tools: $(TRITON)/.installed $(K8S_TOOLS)/.installed

$(TRITON)/.installed:
	test -x $(TRITON)/bin/python || $(PYTHON) -m venv $(TRITON)
	$(TRITON)/bin/python -m pip install --quiet --disable-pip-version-check \
	    'tritonclient[grpc]==2.73.0'
	touch $@

# kubernetes-validate, checkov and the custom resources' schema models (tests/k8s). Every
# package is pinned in the file, so --no-deps installs exactly that set (and kserve without its
# model server's dependencies).
$(K8S_TOOLS)/.installed: k8s/tools-requirements.txt
	test -x $(K8S_TOOLS)/bin/python || $(PYTHON) -m venv $(K8S_TOOLS)
	$(K8S_TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
	    -r k8s/tools-requirements.txt
	touch $@

# The serving image's dependency set and nothing more (tests/docker/test_serve_only.py), made
# afresh when pyproject.toml changes: pip never removes what an extra stopped listing. A Python
# every user can read: tests/docker/test_unprivileged.py runs it as uid 10001, and a venv made
# from a Python under a private home (pyenv's in /root) cannot start as that user.
SERVE_VENV   := .venv-serve
SERVE_PYTHON ?= $(firstword $(wildcard /usr/bin/python3.11 /usr/local/bin/python3.11) $(PYTHON))
SERVE_STAMP  := $(SERVE_VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
PYTEST_PINS  := $(shell sed -n 's/.*"\(pytest\(-timeout\)\{0,1\}==[^"]*\)".*/\1/p' pyproject.toml)
serve-venv: $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml
	rm -rf $(SERVE_VENV) && $(SERVE_PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	    -e '.[serve]' $(PYTEST_PINS)
	touch $@

test: install system-deps tools serve-venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check training serving tests benchmarks monitoring k8s

# CIFAR-10 accuracy in bounded time on this machine's CPU (see docs/benchmarks.md).
bench-train: install
	mkdir -p artifacts
	$(BIN)/python -m training train --config training/configs/cifar10_fast.yaml \
	    --set data.path=$(CIFAR) $(addprefix --set ,$(SET)) 2>&1 | tee artifacts/bench-train.log

# Quantized variants side by side: size, LiteRT latency at batch 1 and 32, heatmap cost.
bench-quantize: install
	$(BIN)/python benchmarks/bench_quantize.py $(ARTIFACT)
	$(BIN)/python benchmarks/cam_parity.py $(ARTIFACT)

# The server under load from separate processes, against the raw interpreter: the main model is
# the newest CIFAR-10 artifact (make bench-train quantize ARTIFACT=...), the small one the newest
# shapes artifact (make train quantize); without one, the "beyond inference" cells are skipped.
BENCH_MODEL ?= $(lastword $(sort $(wildcard artifacts/cifar10-fast-2*)))
BENCH_SMALL ?= $(lastword $(sort $(wildcard artifacts/shapes-2*)))
bench-server: install
	@test -n "$(BENCH_MODEL)" || { echo "bench-server: no CIFAR-10 artifact: make bench-train,"\
	    "then make quantize ARTIFACT=artifacts/cifar10-fast-..., or set BENCH_MODEL"; exit 2; }
	$(BIN)/python benchmarks/bench_server.py --model $(BENCH_MODEL) \
	    $(if $(BENCH_SMALL),--small-model $(BENCH_SMALL))
	$(BIN)/python benchmarks/bench_metrics.py --model $(BENCH_MODEL)

# A 10x burst: goodput against capacity, refusal latency, work for departed clients.
bench-overload: install
	@test -n "$(BENCH_SMALL)" || { echo "bench-overload: no shapes artifact: make train quantize"; exit 2; }
	$(BIN)/python benchmarks/bench_overload.py --model $(BENCH_SMALL) --heatmap --pin

# Peak memory under a flood of 2 KB PNGs that decode to 4096 x 4096.
bench-decode-memory: install
	@test -n "$(BENCH_SMALL)" || { echo "bench-decode-memory: no shapes artifact: make train quantize"; exit 2; }
	$(BIN)/python benchmarks/bench_decode_memory.py --model $(BENCH_SMALL)

# What an A/B experiment costs: split against one model, shadow at half capacity, the router.
bench-ab: install
	@test -n "$(BENCH_SMALL)" || { echo "bench-ab: no shapes artifact: make train quantize"; exit 2; }
	$(BIN)/python benchmarks/bench_ab.py --model $(BENCH_SMALL)

# One server process against one per core, side by side (--processes; issue 13).
bench-processes: install
	@test -n "$(BENCH_SMALL)" || { echo "bench-processes: no shapes artifact: make train quantize"; exit 2; }
	$(BIN)/python benchmarks/bench_processes.py --model $(BENCH_SMALL)

bench: bench-quantize bench-server bench-overload bench-decode-memory bench-ab bench-processes

# Offline: kubectl kustomize on every kustomization under k8s/, kubernetes-validate --strict
# for Kubernetes 1.29-1.33, the custom resources against their CRD models, checkov against the
# skips k8s/README.md lists, the generated monitoring files against monitoring/.
k8s-validate: install $(K8S_TOOLS)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/k8s

# The namespace and its Secrets first (so no pod waits on a missing volume), then the overlay.
k8s-apply:
	@test -f k8s/overlays/$(OVERLAY)/kustomization.yaml || { \
	    echo "k8s-apply: no overlay k8s/overlays/$(OVERLAY): use OVERLAY=dev, prod or canary"; exit 2; }
	@kubectl version --request-timeout=5s >/dev/null 2>&1 || { \
	    echo "k8s-apply: kubectl reaches no cluster (context: $$(kubectl config current-context 2>/dev/null || echo none));" \
	         "set KUBECONFIG or run kubectl config use-context"; exit 2; }
	kubectl apply -f k8s/base/namespace.yaml
	k8s/tools/ensure-secrets.sh sightline
	kubectl apply -k k8s/overlays/$(OVERLAY)

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(TRITON) $(K8S_TOOLS) $(SERVE_VENV) $(MODELS) *.egg-info
