package event_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Every line the daemon writes goes through Encode.
func ExampleEncode() {
	at, _ := inventory.Parse([]byte(`{"containers":{},"last_scan":"2026-02-04T10:30:00.5Z"}`))
	line, _, err := event.Encode(event.Envelope{
		Timestamp: *at.LastScan, EventType: event.ContainerExited, User: "alice", Source: event.Source,
	}, event.ContainerExitedDetails{ContainerID: "abc123def456", Name: "train", Origin: inventory.OriginRawDocker})
	fmt.Println(string(line), err)
	// Output:
	// {"timestamp":"2026-02-04T10:30:00.500000Z","event_type":"detection.container_exited","schema_version":"1","user":"alice","source":"ds01-detectord","details":{"container_id":"abc123def456","name":"train","origin":"raw-docker","gpu_allocated_seconds":0,"gpu_held_seconds":0,"gpu_busy_seconds":0}} <nil>
}

// Decode reads one line: the v1 envelope, or the older ts/event form some
// ds01 tools still write.
func ExampleDecode() {
	for _, line := range []string{
		`{"timestamp":"2026-02-04T10:30:00Z","event_type":"detection.container_discovered","schema_version":"1","user":"alice","details":{"container_id":"abc123def456"}}`,
		`{"ts":"2026-02-04T10:31:00Z","event":"bare_metal.warning","user":"bob"}`,
		`not an event`,
	} {
		e, err := event.Decode([]byte(line))
		if err != nil {
			fmt.Println("skipped:", err)
			continue
		}
		fmt.Printf("%s %s %s details=%s\n", e.Timestamp, e.EventType, e.User, e.Details)
	}
	// Output:
	// 2026-02-04T10:30:00Z detection.container_discovered alice details={"container_id":"abc123def456"}
	// 2026-02-04T10:31:00Z bare_metal.warning bob details=
	// skipped: invalid character 'o' in literal null (expecting 'u')
}

// Reading the log and its logrotate archives, oldest first: each line is
// an event, or an error for a line that is not one (skipped here).
func ExampleReader() {
	dir, _ := os.MkdirTemp("", "events")
	defer os.RemoveAll(dir)
	log := filepath.Join(dir, "events.jsonl")
	os.WriteFile(log+".1", []byte(`{"timestamp":"2026-02-03T09:00:00Z","event_type":"detection.container_discovered","schema_version":"1","user":"bob"}`+"\n"), 0o644)
	os.WriteFile(log, []byte(`{"timestamp":"2026-02-04T10:30:00Z","event_type":"detection.container_exited","schema_version":"1","user":"alice"}`+"\nnot an event\n"), 0o644)
	for e, err := range (event.Reader{Path: log, Archives: true}).Events(context.Background()) {
		var notEvent *event.LineError
		if errors.As(err, &notEvent) {
			fmt.Println("skipped line", notEvent.Pos.Line, "of", filepath.Base(notEvent.Pos.File))
			continue
		}
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(e.Timestamp, e.EventType, e.User, filepath.Base(e.Pos.File))
	}
	// Output:
	// 2026-02-03T09:00:00Z detection.container_discovered bob events.jsonl.1
	// 2026-02-04T10:30:00Z detection.container_exited alice events.jsonl
	// skipped line 2 of events.jsonl
}
