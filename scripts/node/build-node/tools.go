//go:build tools

// Package tools pins the node commands built by scripts/node.sh so that
// `go mod tidy` keeps every dependency they need in go.sum. The versions are
// those of scripts/kube/build-k8s (the control plane): one Kubernetes version.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
