package cycle

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/pkg/event"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// The journal lines the golden scans do not reach: a host process's GPU
// verdicts, a GPU used without access, and a user name past the cap.
func TestJournalLines(t *testing.T) {
	var buf strings.Builder
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = ""
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(&buf), zapcore.DebugLevel))
	long := strings.Repeat("é", 200) // 400 bytes
	st := inventory.Empty()
	for _, tr := range []reconcile.Transition{
		{EventType: event.GPUIdle, User: "alice", Details: event.GPUIdleDetails{Pid: 42, GPUUUIDs: []string{"GPU-1"}, ThresholdPercent: 5}},
		{EventType: event.GPUActive, User: long, Details: event.GPUIdleDetails{Pid: 42, GPUUUIDs: []string{"GPU-1"}, ThresholdPercent: 5}},
	} {
		msg, fields := transitionLine(tr, st)
		log.Info(msg, fields...)
	}
	msg, fields := warningLine(reconcile.Warning{Kind: reconcile.WarnGPUWithoutAccess, ContainerID: "abc", Name: "n", User: "bob"})
	log.Warn(msg, fields...)
	want := `{"level":"info","msg":"GPU held idle: pid 42","pid":42,"user":"alice","gpu_uuids":["GPU-1"],"threshold_percent":5}
{"level":"info","msg":"GPU active again: pid 42","pid":42,"user":"` + strings.Repeat("é", 128) + `…","gpu_uuids":["GPU-1"],"threshold_percent":5}
{"level":"warn","msg":"container uses a GPU its configuration does not grant","container_id":"abc","name":"n","user":"bob"}
`
	if buf.String() != want {
		t.Errorf("journal:\n%s\nwant:\n%s", buf.String(), want)
	}
}
