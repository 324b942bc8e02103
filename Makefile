# Hostwright: the commands the README gives and CI runs.
#   make test   unit tests, then the end-to-end suite on the local control plane
#               (or on the cluster named by KUBECONFIG, if set)
#   make demo   local control plane + CRDs + examples, then kubectl get
#   make crds   regenerate crds/ and the chart's CRDs from the Rust types

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CLUSTER := e2e/cluster
TOOLS_PATH = $(shell $(CLUSTER) env | sed -n 's/^export PATH="\(.*\):\$$PATH"/\1/p')

.PHONY: all build deps lint unit e2e test demo crds clean-cluster

all: build

build:
	cargo build --workspace

deps:
	@e2e/install-deps

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit: lint
	cargo test --package hostwright

# With KUBECONFIG set the suite runs against that cluster; otherwise the
# local control plane is brought up for the run and taken down afterwards.
e2e: deps
	cargo build --workspace --tests
	@if [ -n "$${KUBECONFIG:-}" ]; then \
	  echo ">> e2e against KUBECONFIG=$$KUBECONFIG"; \
	  PATH="$(TOOLS_PATH):$$PATH" cargo test --package hostwright-e2e --no-fail-fast; \
	else \
	  trap '$(CLUSTER) down' EXIT; \
	  $(CLUSTER) up; \
	  KUBECONFIG=$$($(CLUSTER) kubeconfig) PATH="$(TOOLS_PATH):$$PATH" \
	    cargo test --package hostwright-e2e --no-fail-fast; \
	fi

test: unit e2e

# Leaves the cluster running so you can look around; `e2e/cluster down` stops it.
demo: deps build
	@if [ -z "$${KUBECONFIG:-}" ]; then $(CLUSTER) up; fi
	@export KUBECONFIG=$${KUBECONFIG:-$$($(CLUSTER) kubeconfig)} PATH="$(TOOLS_PATH):$$PATH"; \
	  kubectl apply --server-side -f crds/hostwright.yaml; \
	  kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null; \
	  kubectl apply -f manifests/examples/; \
	  echo; kubectl get webclusters,sessionstores,databasemirrors; \
	  echo; echo "KUBECONFIG=$$KUBECONFIG  (stop the local cluster with: e2e/cluster down)"

crds:
	cargo run --quiet -- crds > crds/hostwright.yaml
	cp crds/hostwright.yaml charts/hostwright/crds/hostwright.yaml

clean-cluster:
	$(CLUSTER) down
