# shellcheck shell=bash
# Certificates and kubeconfigs of the local control plane, made with openssl.
# Each component gets its own client identity so the API server's RBAC sees
# the same users as in a real cluster (system:kube-controller-manager, ...).

# make_cert NAME CN [O] [SANS]: a key and certificate signed by the cluster CA.
make_cert() {
  local name=$1 cn=$2 org=${3:-} sans=${4:-} subj ext
  subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  ext=$(mktemp)
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$sans" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" \
    -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 365 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$ext" "$PKI/$name.csr"
}

# make_kubeconfig NAME [SERVER]: a kubeconfig for client certificate NAME,
# for the API server at SERVER (default https://127.0.0.1:<port>).
make_kubeconfig() {
  local name=$1 server=${2:-https://127.0.0.1:$API_PORT}
  cat >"$STATE/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hostwright-e2e
  cluster:
    server: $server
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: hostwright-e2e
  context:
    cluster: hostwright-e2e
    user: $name
current-context: hostwright-e2e
EOF
}

make_pki() {
  mkdir -p "$PKI"
  openssl req -x509 -new -newkey rsa:2048 -nodes -days 365 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=hostwright-e2e-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  make_cert apiserver kube-apiserver "" \
    "IP:127.0.0.1,IP:$SERVICE_IP,IP:$NODE_NET.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  make_cert admin hostwright-admin system:masters
  # The API server's identity towards kubelets (logs, exec, port-forward).
  make_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  make_cert controller-manager system:kube-controller-manager
  make_cert scheduler system:kube-scheduler
  # KWOK plays every kubelet; it needs node and pod status writes cluster-wide.
  make_cert kwok kwok-controller system:masters
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  local c
  for c in admin controller-manager scheduler kwok; do make_kubeconfig "$c"; done
}
