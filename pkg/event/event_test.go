package event

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/pkg/inventory"
)

var ts = inventory.NewTime(time.Date(2026, 2, 4, 10, 30, 0, 123456000, time.UTC))

func TestEncodeMatchesReferenceEnvelope(t *testing.T) {
	line, res, err := Encode(Envelope{Timestamp: ts, EventType: ContainerExited, User: "bjørn<&>", Source: Source},
		ContainerExitedDetails{ContainerID: "abc123def456", Name: "n", Origin: "raw-docker"})
	if err != nil || res.Truncated {
		t.Fatal(err, res)
	}
	want := `{"timestamp":"2026-02-04T10:30:00.123456Z","event_type":"detection.container_exited","schema_version":"1","user":"bj\u00f8rn<&>","source":"ds01-detectord","details":{"container_id":"abc123def456","name":"n","origin":"raw-docker","gpu_allocated_seconds":0,"gpu_held_seconds":0,"gpu_busy_seconds":0}}`
	if string(line) != want {
		t.Errorf("got  %s\nwant %s", line, want)
	}
}

func TestEncodeOmitsEmptyUserAndDetails(t *testing.T) {
	line, _, _ := Encode(Envelope{Timestamp: inventory.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), EventType: "x.y"}, nil)
	want := `{"timestamp":"2026-01-01T00:00:00Z","event_type":"x.y","schema_version":"1"}`
	if string(line) != want {
		t.Errorf("got %s want %s", line, want)
	}
}

func TestEncodeTruncates(t *testing.T) {
	big := strings.Repeat("é", 3000) // 6 bytes each once escaped
	line, res, err := Encode(Envelope{Timestamp: ts, EventType: ContainerDiscovered, User: "u", Source: Source},
		ContainerDiscoveredDetails{ContainerID: "c", Name: big})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Truncated || res.OriginalSize <= MaxLineBytes || len(line) > MaxLineBytes {
		t.Fatalf("res %+v len %d", res, len(line))
	}
	e, err := Decode(line)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	json.Unmarshal(e.Details, &d)
	if d["truncated"] != true || int(d["original_size"].(float64)) != res.OriginalSize || e.User != "u" {
		t.Errorf("truncated event = %s", line)
	}
}

func TestEncodeHugeUserStillFits(t *testing.T) {
	user := strings.Repeat("a\n\x1b[31m", 200000)
	line, _, err := Encode(Envelope{Timestamp: ts, EventType: ContainerDiscovered, User: user, Source: Source}, map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	if len(line) > MaxLineBytes || strings.ContainsAny(string(line), "\n\x1b") {
		t.Fatalf("line of %d bytes, raw control characters: %q", len(line), line[:80])
	}
	if _, err := Decode(line); err != nil {
		t.Fatal(err)
	}
}
