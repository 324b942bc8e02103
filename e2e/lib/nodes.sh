# shellcheck shell=bash
# Real nodes for the local control plane: each one a kubelet, a kube-proxy
# and a containerd (with runc and the CNI plugins) of its own, in a network
# namespace of its own, with its own runtime state and cgroup root.
#
# NetworkPolicy is enforced on every node by kube-network-policies (SIG
# Network's reference enforcer, e2e/versions.env): the first packet of each
# new connection from or to one of the node's pods is queued (NFQUEUE) to it
# and dropped unless the policies admit it. See nodes_netpol_* below.
#
# Sourced by e2e/cluster. Addresses (NET = HOSTWRIGHT_POD_NET, default 244):
#   bridge hw<NET>br on the host     192.168.<NET>.1/24, the nodes' network
#   node i, netns hw<NET>n<i>        192.168.<NET>.(10+i), pods 10.<NET>.(100+i).0/24
# The host routes each node's pod range and the Service range to the nodes,
# so a packet for a pod or a Service never takes the default route off the
# machine; the nodes have no default route at all, and the host does not
# forward (net.ipv4.ip_forward stays as it is, 0 here). Nodes reach the API
# server, which listens on 127.0.0.1 only, through one DNAT rule for
# 192.168.<NET>.1:<API port> on the bridge (route_localnet on the bridge);
# their pods reach the S3 server (s3s-fs, also on 127.0.0.1 only) the same
# way, at 192.168.<NET>.1:<S3 port>.
#
# Real nodes carry the taint hostwright.io/real-node=true:NoSchedule and the
# label hostwright.io/node=real: the test bed's (KWOK) pods never land on
# them, and a pod that is to run in a real container says so.
#
# `nodes_down` leaves nothing behind: the host-wide sysctls kubelet sets
# (restored to what they were), processes (found by their state
# directory and by each node's cgroup root), mounts under the state
# directory, the network namespaces (and the pod namespaces, kept under the
# state directory), the bridge, routes and the DNAT chain. `nodes_leftovers`
# lists whatever it finds of them, so `e2e/cluster down` can check.

: "${HOSTWRIGHT_REAL_NODES:=0}"
NODE_NET="192.168.$HOSTWRIGHT_POD_NET"
NODES_BRIDGE="hw${HOSTWRIGHT_POD_NET}br"
CLIENT_ADDRS=16
CLIENT_ADDR_BASE=200
NODES_CHAIN="HW${HOSTWRIGHT_POD_NET}-API"
PAUSE_IMAGE=hostwright.local/pause:1
BUSYBOX_IMAGE=hostwright.local/busybox:1
OPERATOR_IMAGE=hostwright.local/hostwright:dev
POSTGRES_IMAGE=hostwright.local/postgres:15
REDIS_IMAGE=hostwright.local/redis:7
NGINX_IMAGE=hostwright.local/nginx:1.22
SITE_IMAGE=hostwright.local/site
# Host-wide settings kubelet changes to its liking at start (they are not per
# network namespace); saved before and restored by nodes_down.
KUBELET_SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops"
CGROUP_V1_CONTROLLERS="cpu cpuacct cpuset memory pids blkio devices freezer hugetlb net_cls perf_event systemd"
# Where a node's cgroup root ends up: kubelet and runc also make it (and
# kubepods/ under it) in the hybrid layout's cgroup v2 hierarchy.
CGROUP_HIERARCHIES="$CGROUP_V1_CONTROLLERS unified"

# shellcheck source=e2e/lib/images.sh
. "$E2E_DIR/lib/images.sh"

real_node_name() { echo "hw-real-$1"; }
real_node_ns() { echo "hw${HOSTWRIGHT_POD_NET}n$1"; }
real_node_ip() { echo "$NODE_NET.$((10 + $1))"; }
real_node_pods() { echo "10.$HOSTWRIGHT_POD_NET.$((100 + $1)).0/24"; }
real_node_dir() { echo "$STATE/nodes/$1"; }
real_node_cgroup() { echo "hostwright-$HOSTWRIGHT_POD_NET-n$1"; }
# The nfqueue the node's NetworkPolicy enforcer reads (per network namespace,
# so every node and every cluster can use the same number).
NETPOL_QUEUE=100
NETPOL_CHAIN=HW-NETPOL
# Run a command in node I's network namespace. nsenter, not `ip netns exec`:
# that one also gives the command a mount namespace with a fresh /sys, which
# hides the cgroup mounts kubelet and runc need.
in_node() { local i=$1; shift; nsenter --net="/run/netns/$(real_node_ns "$i")" -- "$@"; }

nodes_check_deps() {
  local missing="" c
  for c in containerd containerd-shim-runc-v2 runc ctr ip iptables nsenter unshare findmnt dpkg-deb apt-get; do
    command -v "$c" >/dev/null || missing+=" $c"
  done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || missing+=" containernetworking-plugins"
  [ -z "$missing" ] ||
    die "real nodes need:$missing (e2e/install-deps installs them: containerd runc containernetworking-plugins iptables)"
  nodes_check_kernel
}

# The kernel parts the NetworkPolicy enforcer needs: nfnetlink_queue (its
# queue), br_netfilter (bridged pod-to-pod traffic through iptables) and the
# xt NFQUEUE, owner and conntrack matches (its queue rule, see
# real_node_netpol_rules). Loaded where the kernel has modules; built in on
# the project's VMs, whose kernel has no modules and no nft `queue`
# expression (CONFIG_NFT_QUEUE is off).
nodes_check_kernel() {
  local m
  if command -v modprobe >/dev/null && [ -e /proc/modules ]; then
    for m in br_netfilter nfnetlink_queue xt_NFQUEUE xt_owner xt_conntrack; do
      modprobe -q "$m" 2>/dev/null || true
    done
  fi
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ||
    die "real nodes need br_netfilter (modprobe br_netfilter) for NetworkPolicy between pods of one node"
  [ -e /proc/net/netfilter/nfnetlink_queue ] ||
    die "real nodes need nfnetlink_queue (modprobe nfnetlink_queue) for the NetworkPolicy enforcer"
}

# The nodes' network: the bridge, the DNAT towards the API server and the
# S3 server, and the host's routes for the Service range (through node 1's
# kube-proxy).
nodes_network_up() {
  ip link add "$NODES_BRIDGE" type bridge
  ip addr add "$NODE_NET.1/24" dev "$NODES_BRIDGE"
  nodes_client_addrs_up
  ip link set "$NODES_BRIDGE" up
  sysctl -qw "net.ipv4.conf.$NODES_BRIDGE.route_localnet=1"
  iptables -t nat -N "$NODES_CHAIN"
  iptables -t nat -A "$NODES_CHAIN" -d "$NODE_NET.1" -p tcp --dport "$API_PORT" \
    -j DNAT --to-destination "127.0.0.1:$API_PORT"
  nodes_s3_dnat
  iptables -t nat -A PREROUTING -i "$NODES_BRIDGE" -j "$NODES_CHAIN"
}

# The addresses this machine's load generators send from, one per simulated
# client machine ($CLIENT_ADDRS of them, after the bridge's own address).
# When a node dies, node 1's conntrack keeps the entries of connections to
# its pods: a half-open one stays ESTABLISHED for days, one whose SYN went
# unanswered SYN_SENT for two minutes, and kube-proxy removes neither
# (kubernetes/kubernetes#101607, #104098). A later SYN on the same tuple
# (same client address and port, same Service) follows the entry to the
# dead pod and fails with "No route to host". Real visitors come from many
# machines; so do these, and each takes its source ports in turn through
# the whole ephemeral range, so none comes round within a run
# (e2e/src/visitors.rs).
nodes_client_addrs() {
  local k
  for ((k = 1; k <= CLIENT_ADDRS; k++)); do echo "$NODE_NET.$((CLIENT_ADDR_BASE + k))"; done
}

nodes_client_addrs_up() {
  local addr
  for addr in $(nodes_client_addrs); do
    ip addr add "$addr/32" dev "$NODES_BRIDGE"
  done
}

# nodes_s3_dnat: what lets the real nodes' pods reach the S3 server (which
# listens on 127.0.0.1 only) at $NODE_NET.1:$S3_PORT. Only connections that
# come in on the bridge are rewritten; this machine's own processes use
# 127.0.0.1. Idempotent, so `e2e/cluster up` can add it to a running
# cluster started before the S3 server was part of it.
nodes_s3_dnat() {
  local rule=(-d "$NODE_NET.1" -p tcp --dport "$S3_PORT" -j DNAT --to-destination "127.0.0.1:$S3_PORT")
  iptables -t nat -C "$NODES_CHAIN" "${rule[@]}" 2>/dev/null ||
    iptables -t nat -A "$NODES_CHAIN" "${rule[@]}"
}

# nodes_dns_up: the cluster DNS, CoreDNS on the bridge's address, where
# every real node's kubelet points its pods. It answers for cluster.local
# from the API (Services, their endpoints) and refuses every other name:
# nothing here resolves or reaches a name beyond this machine.
nodes_dns_up() {
  mkdir -p "$STATE/nodes/dns"
  cat >"$STATE/nodes/dns/Corefile" <<EOF
cluster.local:53 {
  bind $NODE_NET.1
  errors
  kubernetes cluster.local {
    kubeconfig $STATE/admin.kubeconfig
  }
  cache 5
}
EOF
  start coredns coredns -conf "$STATE/nodes/dns/Corefile"
  wait_for "the cluster DNS on $NODE_NET.1:53" 30 sh -c "ss -lnu | grep -qF '$NODE_NET.1:53 '" ||
    fail_start coredns
}

# real_node_network I: node I's namespace, its link to the bridge, its routes.
real_node_network() {
  local i=$1 ns veth j
  ns=$(real_node_ns "$i")
  veth="hw${HOSTWRIGHT_POD_NET}v$i"
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$NODES_BRIDGE" up
  in_node "$i" ip link set lo up
  in_node "$i" ip addr add "$(real_node_ip "$i")/24" dev eth0
  in_node "$i" ip link set eth0 up
  in_node "$i" sysctl -qw net.ipv4.ip_forward=1
  # Pod traffic through the pods' bridge goes through iptables, so a pod
  # reaches a Service whose endpoint is on the same node, and NetworkPolicy
  # holds between two pods of one node (the enforcer's queue rule is an
  # iptables one). Per network namespace (kernel 5.3+); br_netfilter must be
  # there (nodes_check_kernel).
  in_node "$i" sysctl -qw net.bridge.bridge-nf-call-iptables=1
  [ "$(in_node "$i" sysctl -n net.bridge.bridge-nf-call-iptables)" = 1 ] ||
    die "bridged pod traffic of node $i would bypass iptables (net.bridge.bridge-nf-call-iptables)"
  # Service addresses are rewritten before they are routed; the route only
  # has to exist (and stay on this machine).
  in_node "$i" ip route add "$SERVICE_CIDR" via "$NODE_NET.1"
  for j in $(seq 1 "$HOSTWRIGHT_REAL_NODES"); do
    [ "$j" = "$i" ] && continue
    in_node "$i" ip route add "$(real_node_pods "$j")" via "$(real_node_ip "$j")"
  done
  ip route add "$(real_node_pods "$i")" via "$(real_node_ip "$i")"
}

# nodes_netpol_identity: the enforcers' identity, as upstream's install.yaml
# gives its DaemonSet: a ServiceAccount allowed to list and watch pods,
# namespaces and NetworkPolicies. kube-network-policies only reads the
# in-cluster configuration (a token and CA at the fixed
# /var/run/secrets/kubernetes.io/serviceaccount, KUBERNETES_SERVICE_HOST),
# so its token and the CA go to $STATE/nodes/netpol and
# real_node_netpol_start shows them there in a mount namespace of its own.
nodes_netpol_identity() {
  local dir=$STATE/nodes/netpol token=""
  kubectl_admin apply -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-network-policies, namespace: kube-system}
---
apiVersion: v1
kind: Secret
metadata:
  name: kube-network-policies-token
  namespace: kube-system
  annotations: {kubernetes.io/service-account.name: kube-network-policies}
type: kubernetes.io/service-account-token
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kube-network-policies}
rules:
- apiGroups: [""]
  resources: [pods, namespaces]
  verbs: [list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kube-network-policies}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kube-network-policies}
subjects:
- {kind: ServiceAccount, name: kube-network-policies, namespace: kube-system}
EOF
  local deadline=$((SECONDS + 60))
  while [ -z "$token" ] && [ $SECONDS -lt $deadline ]; do
    token=$(kubectl_admin -n kube-system get secret kube-network-policies-token \
      -o jsonpath='{.data.token}' 2>/dev/null | base64 -d 2>/dev/null) || token=""
    [ -n "$token" ] || sleep 0.5
  done
  [ -n "$token" ] || { log "no token for the kube-network-policies ServiceAccount"; return 1; }
  mkdir -p "$dir"
  (umask 077 && printf '%s' "$token" >"$dir/token")
  cp "$PKI/ca.crt" "$dir/ca.crt"
}

# real_node_netpol_rules I: what queues node I's new pod connections to its
# enforcer. kube-network-policies programs the same itself with nftables,
# but its rules' `queue` expression needs nft_queue, which the project's VM
# kernel lacks (CONFIG_NFT_QUEUE off, no modules): its nftables batch is
# refused whole (it logs "syncing nftables rules" with "no such file or
# directory" and retries, harmlessly). The iptables NFQUEUE target (xt,
# through nft_compat) queues to the very same nfqueue, so its rules are made
# here, as in its postrouting chain (before SNAT and after DNAT, so Service
# traffic is judged by the endpoint it goes to): root's own traffic on the
# node (kubelet's probes) and established connections pass; the first packet
# of any other connection from or to one of the node's pods is queued.
# Upstream queues only the pods some policy selects (a set in its own
# table); here every pod's new connections are judged, as upstream does with
# AdminNetworkPolicy on. No bypass: while the enforcer is not running, new
# pod connections fail (upstream's default, fail closed). Idempotent, so
# start-node can run it again on the surviving network namespace.
real_node_netpol_rules() {
  local i=$1 pods
  pods=$(real_node_pods "$i")
  in_node "$i" iptables -w -t mangle -N "$NETPOL_CHAIN" 2>/dev/null ||
    in_node "$i" iptables -w -t mangle -F "$NETPOL_CHAIN" || return 1
  in_node "$i" iptables -w -t mangle -A "$NETPOL_CHAIN" -m owner --uid-owner 0 -j RETURN &&
    in_node "$i" iptables -w -t mangle -A "$NETPOL_CHAIN" \
      -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN &&
    in_node "$i" iptables -w -t mangle -A "$NETPOL_CHAIN" -s "$pods" \
      -j NFQUEUE --queue-num "$NETPOL_QUEUE" &&
    in_node "$i" iptables -w -t mangle -A "$NETPOL_CHAIN" -d "$pods" \
      -j NFQUEUE --queue-num "$NETPOL_QUEUE" || return 1
  in_node "$i" iptables -w -t mangle -C POSTROUTING -j "$NETPOL_CHAIN" 2>/dev/null ||
    in_node "$i" iptables -w -t mangle -A POSTROUTING -j "$NETPOL_CHAIN"
}

# real_node_netpol_start I: node I's kube-network-policies, in the node's
# network namespace and a mount namespace of its own whose /run is a fresh
# tmpfs holding only the in-cluster credentials (nothing is written to the
# host's /run, and its NRI client finds no socket: containerd 1.6 has no
# NRI). Its copies of the mounts under /run and the state directory (network
# namespaces, pods' volumes) are dropped first, so it pins none of them.
# It runs as $dir/kube-network-policies (a link to the cached binary), so
# real_node_pids finds it like the node's other components.
real_node_netpol_start() {
  local i=$1 dir name
  dir=$(real_node_dir "$i")
  name=$(real_node_name "$i")
  ln -sfn "$(bin_dir kube-network-policies "$KUBE_NETWORK_POLICIES_VERSION")/kube-network-policies" \
    "$dir/kube-network-policies"
  real_node_netpol_rules "$i" || die "could not add the NetworkPolicy queue rules of $name"
  # shellcheck disable=SC2016
  start "netpol-$i" nsenter --net="/run/netns/$(real_node_ns "$i")" -- \
    env KUBERNETES_SERVICE_HOST="$NODE_NET.1" KUBERNETES_SERVICE_PORT="$API_PORT" \
    unshare --mount --propagation private -- /bin/sh -c '
      set -e
      awk "{ print \$5 }" /proc/self/mountinfo | grep -E "^(/run/|$1/)" | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
      mount -t tmpfs -o mode=0755,size=1m hostwright-netpol /run
      sa=/run/secrets/kubernetes.io/serviceaccount
      mkdir -p "$sa"
      cp "$1/netpol/token" "$1/netpol/ca.crt" "$sa/"
      shift
      exec "$@"' sh "$STATE/nodes" \
    "$dir/kube-network-policies" --hostname-override "$name" \
    --nfqueue-id "$NETPOL_QUEUE" --metrics-bind-address 127.0.0.1:9080 \
    --netfilter-bug-1766-fix=false --v "${HOSTWRIGHT_NETPOL_V:-1}"
  # Ready once it has read the policies and bound its queue.
  wait_for "the NetworkPolicy enforcer of $name" 60 real_node_netpol_bound "$i" ||
    fail_start "netpol-$i"
}

# Whether node I's enforcer has bound its nfqueue.
real_node_netpol_bound() {
  in_node "$1" cat /proc/net/netfilter/nfnetlink_queue |
    awk -v q="$NETPOL_QUEUE" '$1 == q { found = 1 } END { exit !found }'
}

# A cgroup root of the node's own in every v1 hierarchy (kubelet checks it
# exists); cpuset needs its cpus and mems filled in before use.
real_node_cgroups() {
  local root c dir
  root=$(real_node_cgroup "$1")
  for c in $CGROUP_V1_CONTROLLERS; do
    [ -d "/sys/fs/cgroup/$c" ] || continue
    dir="/sys/fs/cgroup/$c/$root"
    mkdir -p "$dir"
    if [ "$c" = cpuset ]; then
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"$dir/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"$dir/cpuset.mems"
    fi
  done
}

real_node_pki() {
  local i=$1 name dir
  name=$(real_node_name "$i")
  dir=$(real_node_dir "$i")
  make_cert "kubelet-$i" "system:node:$name" system:nodes
  make_kubeconfig "kubelet-$i" "https://$NODE_NET.1:$API_PORT"
  mv "$STATE/kubelet-$i.kubeconfig" "$dir/kubelet.kubeconfig"
}

real_node_config() {
  local i=$1 dir name zone
  dir=$(real_node_dir "$i")
  name=$(real_node_name "$i")
  if [ $((i % 2)) -eq 1 ]; then zone=zone-a; else zone=zone-b; fi
  mkdir -p "$dir/cni" "$dir/pod-logs" "$dir/kubelet" "$dir/kubelet-pki"
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This VM refuses negative oom_score_adj; without this every sandbox fails.
  restrict_oom_score_adj = true
  # Pod network namespaces live under the state directory, not /run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
EOF
  cat >"$dir/cni/10-hostwright.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "hostwright",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$dir/cni-ipam",
        "ranges": [[{"subnet": "$(real_node_pods "$i")"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroups here are v1, which kubelet refuses unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$(real_node_cgroup "$i")
containerRuntimeEndpoint: unix://$dir/containerd.sock
address: $(real_node_ip "$i")
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$NODE_NET.1]
resolvConf: ""
failSwapOn: false
podLogsDir: $dir/pod-logs
maxPods: 40
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
nodeStatusUpdateFrequency: 4s
EOF
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $name
bindAddress: $(real_node_ip "$i")
clusterCIDR: 10.$HOSTWRIGHT_POD_NET.0.0/16
mode: iptables
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Leave the kernel's conntrack settings alone (they are the host's).
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  echo "$zone" >"$dir/zone"
}

real_node_start() {
  local i=$1 dir name image
  dir=$(real_node_dir "$i")
  name=$(real_node_name "$i")
  start "containerd-$i" nsenter --net="/run/netns/$(real_node_ns "$i")" -- \
    containerd --config "$dir/containerd.toml" --log-level warn
  wait_for "containerd of $name" 30 ctr --address "$dir/containerd.sock" version ||
    fail_start "containerd-$i"
  for image in $NODE_ARCHIVES; do
    ctr --address "$dir/containerd.sock" -n k8s.io images import "$image" >/dev/null ||
      die "could not import $image into $name"
  done
  # Before kubelet, so no pod of the node runs unjudged.
  real_node_netpol_start "$i"
  start "kubelet-$i" nsenter --net="/run/netns/$(real_node_ns "$i")" -- \
    kubelet --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
    --hostname-override "$name" --node-ip "$(real_node_ip "$i")" \
    --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet-pki" \
    --node-labels "topology.kubernetes.io/zone=$(cat "$dir/zone"),topology.kubernetes.io/region=local,hostwright.io/node=real" \
    --register-with-taints "hostwright.io/real-node=true:NoSchedule" \
    --v 1
  start "kube-proxy-$i" nsenter --net="/run/netns/$(real_node_ns "$i")" -- \
    kube-proxy --config "$dir/kube-proxy.yaml" --v 1
}

# build_node_images: every image a real node holds from the start (the
# operator's comes later, with load-operator), as NODE_ARCHIVES.
build_node_images() {
  local archive builder
  NODE_ARCHIVES=""
  for builder in build_pause_image build_busybox_image build_nginx_image build_postgres_image build_redis_image; do
    archive=$("$builder") || die "could not build an image ($builder)"
    NODE_ARCHIVES="$NODE_ARCHIVES $archive"
  done
}

# nodes_up: build and start HOSTWRIGHT_REAL_NODES real nodes; waits until Ready.
nodes_up() {
  [ "$HOSTWRIGHT_REAL_NODES" -gt 0 ] || return 0
  nodes_check_deps
  build_kubernetes_node
  build_coredns || die "could not build CoreDNS"
  build_kube_network_policies || die "could not build kube-network-policies"
  PATH="$(bin_dir kubernetes-node "$KUBERNETES_VERSION"):$(bin_dir coredns "$COREDNS_VERSION"):$PATH"
  build_node_images
  make_cert kube-proxy system:kube-proxy
  make_kubeconfig kube-proxy "https://$NODE_NET.1:$API_PORT"
  local i k
  mkdir -p "$STATE/nodes"
  for k in $KUBELET_SYSCTLS; do echo "$k=$(sysctl -n "$k")"; done >"$STATE/nodes/sysctls"
  nodes_network_up
  nodes_dns_up
  nodes_netpol_identity || fail_start kube-controller-manager
  for i in $(seq 1 "$HOSTWRIGHT_REAL_NODES"); do
    mkdir -p "$(real_node_dir "$i")"
    real_node_network "$i"
    real_node_cgroups "$i"
    real_node_pki "$i"
    real_node_config "$i"
  done
  # Host-made Service traffic goes through node 1's kube-proxy.
  ip route add "$SERVICE_CIDR" via "$(real_node_ip 1)"
  for i in $(seq 1 "$HOSTWRIGHT_REAL_NODES"); do real_node_start "$i"; done
  for i in $(seq 1 "$HOSTWRIGHT_REAL_NODES"); do
    wait_for "node $(real_node_name "$i") to register" 90 \
      kubectl_admin get node "$(real_node_name "$i")" || fail_start "kubelet-$i"
  done
  kubectl_admin wait --for=condition=Ready node -l hostwright.io/node=real --timeout=120s >/dev/null ||
    fail_start "kubelet-1"
}

# node_stop I: real node I fails as a machine losing power would: its
# kubelet, kube-proxy, NetworkPolicy enforcer, containerd, shims and
# containers are killed at once.
# Its state stays, so node_start can bring it back.
node_stop() {
  [ -d "$(real_node_dir "$1")" ] || die "there is no real node $1"
  real_node_kill "$1"
  log "real node $(real_node_name "$1") stopped"
}

# real_node_kill I: SIGKILL node I's components and containers at once, and
# again until none is left (a dying kubelet or shim may start one more).
real_node_kill() {
  local pids
  for _ in 1 2 3 4 5; do
    pids=$(real_node_pids "$1" | sort -u | tr '\n' ' ')
    [ -z "${pids// /}" ] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  done
}

# node_start I: start real node I's components again after node_stop.
node_start() {
  local i=$1
  [ -d "$(real_node_dir "$i")" ] || die "there is no real node $i"
  PATH="$(bin_dir kubernetes-node "$KUBERNETES_VERSION"):$PATH"
  build_node_images
  real_node_start "$i"
  log "real node $(real_node_name "$i") started"
}

# nodes_load ARCHIVE...: load image archives into every real node.
nodes_load() {
  local archive dir
  [ $# -gt 0 ] || return 1
  for archive in "$@"; do
    for dir in "$STATE"/nodes/*/; do
      [ -S "$dir/containerd.sock" ] || continue
      ctr --address "$dir/containerd.sock" -n k8s.io images import "$archive" >/dev/null ||
        die "could not import $archive into the node at $dir"
    done
    log "loaded $archive into the real nodes"
  done
}

# Every process of real node I: its components (by state directory, so
# shims count too) and everything in its cgroup root (the containers).
real_node_pids() {
  local dir root c
  dir=$(real_node_dir "$1")
  root=$(real_node_cgroup "$1")
  pgrep -f -- "$dir/" || true
  for c in $CGROUP_V1_CONTROLLERS; do
    [ -d "/sys/fs/cgroup/$c/$root" ] || continue
    find "/sys/fs/cgroup/$c/$root" -name cgroup.procs -exec cat {} + 2>/dev/null || true
  done
}

# nodes_down: stop and remove everything nodes_up made (also after a crash).
nodes_down() {
  local i dir c
  if [ -f "$PIDS/coredns.pid" ]; then
    kill -KILL "$(cat "$PIDS/coredns.pid")" 2>/dev/null || true
    rm -f "$PIDS/coredns.pid"
  fi
  for dir in "$STATE"/nodes/*/; do
    [ -d "$dir" ] || continue
    dir=${dir%/}
    real_node_kill "${dir##*/}"
  done
  # Mounts under the state directory, deepest first (overlays, volumes, netns).
  local mounts m
  mounts=$(findmnt -rn -o TARGET | grep -F "$STATE/nodes/" | sort -r || true)
  for m in $mounts; do umount -l "$m" 2>/dev/null || true; done
  for i in $(seq 1 20); do
    ip netns del "$(real_node_ns "$i")" 2>/dev/null || true
    ip route del "$(real_node_pods "$i")" 2>/dev/null || true
    for c in $CGROUP_HIERARCHIES; do
      [ -d "/sys/fs/cgroup/$c/$(real_node_cgroup "$i")" ] || continue
      find "/sys/fs/cgroup/$c/$(real_node_cgroup "$i")" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  done
  if [ -f "$STATE/nodes/sysctls" ]; then
    sysctl -qw $(cat "$STATE/nodes/sysctls") >/dev/null 2>&1 || true
    rm -f "$STATE/nodes/sysctls"
  fi
  ip route del "$SERVICE_CIDR" via "$(real_node_ip 1)" 2>/dev/null || true
  ip link del "$NODES_BRIDGE" 2>/dev/null || true
  iptables -t nat -D PREROUTING -i "$NODES_BRIDGE" -j "$NODES_CHAIN" 2>/dev/null || true
  iptables -t nat -F "$NODES_CHAIN" 2>/dev/null || true
  iptables -t nat -X "$NODES_CHAIN" 2>/dev/null || true
}

# What nodes_down should have removed and did not, one line each.
nodes_leftovers() {
  local i c
  pgrep -af -- "$STATE/nodes/" || true
  findmnt -rn -o TARGET | grep -F "$STATE/nodes/" || true
  ip netns list 2>/dev/null | grep -E "^hw${HOSTWRIGHT_POD_NET}n[0-9]+" || true
  ip link show "$NODES_BRIDGE" >/dev/null 2>&1 && echo "bridge $NODES_BRIDGE"
  ip route show "$SERVICE_CIDR" | sed 's/^/route /'
  iptables -t nat -S 2>/dev/null | grep -F "$NODES_CHAIN" || true
  for i in $(seq 1 20); do
    for c in $CGROUP_HIERARCHIES; do
      [ -d "/sys/fs/cgroup/$c/$(real_node_cgroup "$i")" ] && echo "cgroup /sys/fs/cgroup/$c/$(real_node_cgroup "$i")"
    done
  done
  return 0
}
