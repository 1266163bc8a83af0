//go:build tools

// Package tools pins the etcd server command; it is never compiled.
package tools

import _ "go.etcd.io/etcd/server/v3"
