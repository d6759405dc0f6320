//go:build tools

// Package tools pins sigs.k8s.io/kwok/cmd/kwok so that `go mod tidy` keeps
// every dependency it needs in go.sum.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
