# Hostwright: the commands the README gives and CI runs.
#   make test   unit tests, then the end-to-end suite on the local control plane
#               (or on the cluster named by KUBECONFIG, if set)
#   make alerts promtool's checks and unit tests of the chart's alerts
#   make demo   local control plane + CRDs + examples, then kubectl get
#   make crds   regenerate crds/ and the chart's CRDs from the Rust types
#   make bench  benchmarks (WebCluster fleets, DatabaseMirror failover) on a
#               control plane of its own (bench/run)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CLUSTER := e2e/cluster
TOOLS_PATH = $(shell $(CLUSTER) env | sed -n 's/^export PATH="\(.*\):\$$PATH"/\1/p')

.PHONY: all build deps lint unit alerts e2e test demo demo-down crds manifests install-chart clean-cluster bench

all: build

build:
	cargo build --workspace

deps:
	@e2e/install-deps

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit: deps lint
	cargo test --package hostwright  # includes the agent driver on real PostgreSQL 15

# The chart's alerts (charts/hostwright/files/alerts.yaml): promtool checks
# them and runs their unit tests (charts/hostwright/tests/). promtool is the
# one e2e/cluster build puts in the cache, built here alone if missing.
alerts:
	@set -a; . e2e/versions.env; set +a; . e2e/lib/build.sh; \
	  build_prometheus >&2; promtool="$$(bin_dir prometheus "$$PROMETHEUS_VERSION-k8s-sd")/promtool"; \
	  "$$promtool" check rules charts/hostwright/files/alerts.yaml; \
	  "$$promtool" test rules charts/hostwright/tests/alerts_test.yaml

# With KUBECONFIG set the suite runs against that cluster; otherwise the
# local control plane is brought up for the run, with E2E_REAL_NODES real
# nodes beside the fake ones, and taken down afterwards (failing the run if
# anything is left behind).
E2E_REAL_NODES ?= 2
# Either way the Helm chart is installed first: the tests run the operator
# binary as the chart's ServiceAccount, which proves its RBAC.
# Each package is built as the step that uses it selects it: a workspace-wide
# build unifies features across packages and `cargo test -p` would then
# compile most of the graph a second time.
e2e: deps
	cargo build --package hostwright --bins
	cargo build --package hostwright-demo-site --bins
	cargo test --package hostwright-e2e --no-run
	@if [ -n "$${KUBECONFIG:-}" ]; then \
	  echo ">> e2e against KUBECONFIG=$$KUBECONFIG"; \
	  PATH="$(TOOLS_PATH):$$PATH" $(MAKE) --no-print-directory install-chart; \
	  PATH="$(TOOLS_PATH):$$PATH" cargo test --package hostwright-e2e --no-fail-fast; \
	else \
	  trap '$(CLUSTER) down >/dev/null 2>&1 || true' EXIT; \
	  HOSTWRIGHT_REAL_NODES=$(E2E_REAL_NODES) $(CLUSTER) up; \
	  $(CLUSTER) load-operator target/debug/hostwright; \
	  $(CLUSTER) load-site target/debug/demo-site; \
	  export KUBECONFIG=$$($(CLUSTER) kubeconfig) PATH="$(TOOLS_PATH):$$PATH"; \
	  $(MAKE) --no-print-directory install-chart; \
	  log=$$(mktemp); rc=0; cargo test --package hostwright-e2e --no-fail-fast 2>&1 | tee "$$log" || rc=$$?; \
	  $(CLUSTER) down || { echo "e2e/cluster down left something behind" >&2; rc=1; }; \
	  [ $$rc -eq 0 ] || e2e/failure-summary "$$log"; rm -f "$$log"; \
	  exit $$rc; \
	fi

# The chart into hostwright-system, a namespace enforcing the restricted Pod
# Security profile (so the operator's own pods must meet it).
install-chart:
	kubectl create namespace hostwright-system --dry-run=client -o yaml | \
	  kubectl label --local -f - pod-security.kubernetes.io/enforce=restricted -o yaml | \
	  kubectl apply -f - >/dev/null
	helm upgrade --install hostwright charts/hostwright --namespace hostwright-system \
	  --wait --timeout 3m $(HELM_ARGS)

# On the local control plane the Go builds of its components (minutes on a
# cold machine, much of it waiting on the module proxy) run beside the unit
# stage, at a lower priority, instead of after it.
test: deps
	@bg=""; if [ -z "$${KUBECONFIG:-}" ]; then \
	  build_log=$$(mktemp); \
	  HOSTWRIGHT_REAL_NODES=$(E2E_REAL_NODES) nice -n 10 $(CLUSTER) build >"$$build_log" 2>&1 & bg=$$!; \
	fi; \
	rc=0; $(MAKE) --no-print-directory unit || rc=$$?; \
	if [ -n "$$bg" ]; then \
	  brc=0; wait $$bg || brc=$$?; cat "$$build_log"; rm -f "$$build_log"; \
	  [ $$brc -eq 0 ] || { echo "building the local control plane failed" >&2; exit $$brc; }; \
	fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	$(MAKE) --no-print-directory alerts; \
	$(MAKE) --no-print-directory e2e

# Leaves the cluster, the operator and (on the local control plane) the test
# bed running so you can look around; `make demo-down` stops them all.
# On the local control plane the operator runs in the cluster (the chart,
# with the image built here, on the real nodes), the demo site runs on the
# real nodes in real containers, and the examples go to the KWOK nodes,
# where the test bed plays the kubelet for the stores' member pods: real
# PostgreSQL and Redis servers with real agents (its root is under /tmp: the
# servers' users must reach it). With KUBECONFIG set, the examples go to that
# cluster and the operator runs on this machine.
DEMO_DIR := $(HOME)/.cache/hostwright/demo
DEMO_TESTBED_ROOT := /tmp/hostwright-demo-testbed
DEMO_REAL_NODES ?= 2
demo: deps build
	@local=0; if [ -z "$${KUBECONFIG:-}" ]; then local=1; HOSTWRIGHT_REAL_NODES=$(DEMO_REAL_NODES) $(CLUSTER) up; fi; \
	  export KUBECONFIG=$${KUBECONFIG:-$$($(CLUSTER) kubeconfig)} PATH="$(TOOLS_PATH):$$PATH"; \
	  if [ $$local = 1 ]; then \
	    $(CLUSTER) load-operator target/debug/hostwright; \
	    $(CLUSTER) load-site target/debug/demo-site; \
	    $(MAKE) --no-print-directory install-chart HELM_ARGS="-f e2e/demo/operator-values.yaml"; \
	  else \
	    $(MAKE) --no-print-directory install-chart; \
	    e2e/run-operator "$(DEMO_DIR)"; \
	  fi; \
	  if [ $$local = 1 ] && ! { [ -f "$(DEMO_DIR)/testbed.pid" ] && kill -0 "$$(cat $(DEMO_DIR)/testbed.pid)" 2>/dev/null; }; then \
	    mkdir -p "$(DEMO_DIR)"; \
	    setsid target/debug/hostwright-testbed --root "$(DEMO_TESTBED_ROOT)" >"$(DEMO_DIR)/testbed.log" 2>&1 </dev/null & \
	    echo $$! >"$(DEMO_DIR)/testbed.pid"; \
	  fi; \
	  kubectl apply -f manifests/examples/; \
	  echo ">> waiting for the stores, then the sites that use them"; \
	  kubectl wait --for=condition=Ready sessionstores,databasemirrors --all --timeout=300s || true; \
	  kubectl wait --for=condition=Ready webclusters --all --timeout=180s || true; \
	  echo; kubectl get webclusters,sessionstores,databasemirrors -A; \
	  echo; kubectl get webclusters -o custom-columns='NAME:.metadata.name,READY CONDITION:.status.conditions[?(@.type=="Ready")].message'; \
	  if [ $$local = 1 ]; then echo; kubectl get pods -n hostwright-system -o wide; echo; e2e/demo/run-site "$(DEMO_DIR)"; fi; \
	  echo; echo "KUBECONFIG=$$KUBECONFIG"; \
	  echo "test bed log: $(DEMO_DIR)/testbed.log   operator log: kubectl -n hostwright-system logs deploy/hostwright (or $(DEMO_DIR)/operator.log)"; \
	  echo "stop everything: make demo-down"

demo-down:
	-@[ -f "$(DEMO_DIR)/operator.pid" ] && kill "$$(cat $(DEMO_DIR)/operator.pid)" 2>/dev/null; rm -f "$(DEMO_DIR)/operator.pid"
	-@if [ -f "$(DEMO_DIR)/testbed.pid" ]; then \
	  pid=$$(cat "$(DEMO_DIR)/testbed.pid"); kill "$$pid" 2>/dev/null; \
	  for _ in $$(seq 60); do kill -0 "$$pid" 2>/dev/null || break; sleep 1; done; \
	fi; rm -f "$(DEMO_DIR)/testbed.pid"
	$(CLUSTER) down

crds:
	cargo run --quiet -- crds > crds/hostwright.yaml
	cp crds/hostwright.yaml charts/hostwright/crds/hostwright.yaml
	hack/render-install-manifests

manifests:
	hack/render-install-manifests

clean-cluster:
	$(CLUSTER) down

# Writes bench/results/latest.{json,md,png}; BENCH_SUITES, BENCH_FAILOVER_TRIALS,
# BENCH_SIZES etc. are passed through (see bench/run). Runs its own cluster on
# port 17443.
bench: deps
	bench/run
