// Package api implements the public gRPC services of agentserver.v1 (assistants, runs,
// cluster) on top of the store: validation, defaults, name parsing and conversion between
// stored records and API messages.
//
// It never writes anything for a request that fails validation, and never returns a
// resource of another tenant.
package api

import (
	"encoding/base64"
	"encoding/json"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/store"
)

// Limits are the cluster-wide defaults and bounds the API applies.
type Limits struct {
	// DefaultMaxAttempts applies when an assistant sets none.
	DefaultMaxAttempts int32
	// DefaultTimeout applies when neither run nor assistant sets one.
	DefaultTimeout time.Duration
	// MaxTimeout is the cluster maximum execution timeout.
	MaxTimeout time.Duration
	// MaxWait bounds WaitRun.
	MaxWait time.Duration
}

// DefaultLimits returns the default limits.
func DefaultLimits() Limits {
	return Limits{DefaultMaxAttempts: 1, DefaultTimeout: time.Hour, MaxTimeout: 24 * time.Hour, MaxWait: 10 * time.Minute}
}

const (
	defaultPageSize = 50
	maxPageSize     = 1000
	maxAttemptsCap  = 100
)

var (
	idPattern       = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)
	slotTypePattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)
)

func pageSize(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, invalid("page_size", "must not be negative (got %d)", n)
	case n == 0:
		return defaultPageSize, nil
	case n > maxPageSize:
		return maxPageSize, nil
	}
	return int(n), nil
}

// encodeToken makes an opaque page token of v.
func encodeToken(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeToken(tok string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		return invalid("page_token", "is not a token this server returned")
	}
	return nil
}

// parseName splits "collection/id" and checks the collection.
func parseName(field, name, collection string) (string, error) {
	id, ok := strings.CutPrefix(name, collection+"/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", invalid(field, "must look like %s/{id} (got %q)", collection, name)
	}
	return id, nil
}

func parseAssistantName(field, name string) (string, error) {
	id, err := parseName(field, name, "assistants")
	if err != nil {
		return "", err
	}
	if !idPattern.MatchString(id) {
		return "", invalid(field, "assistant id %q must be 1-63 characters of a-z, 0-9 and '-', starting with a letter", id)
	}
	return id, nil
}

func parseThreadName(field, name string) (string, error) {
	id, err := parseName(field, name, "threads")
	if err != nil {
		return "", err
	}
	if !idPattern.MatchString(id) {
		return "", invalid(field, "thread id %q must be 1-63 characters of a-z, 0-9 and '-', starting with a letter", id)
	}
	return id, nil
}

func parseRunName(field, name string) (uuid.UUID, error) {
	id, err := parseName(field, name, "runs")
	if err != nil {
		return uuid.Nil, err
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return uuid.Nil, invalid(field, "run id %q is not a valid id", id)
	}
	return u, nil
}

func runState(s agentserverv1.Run_State) store.RunState { return store.RunState(s) }
