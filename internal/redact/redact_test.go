package redact

import (
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"python train.py --lr 0.1", "python train.py --lr 0.1"},
		{"app --token=abc123", "app --token=***"},
		{"app --token abc123 --epochs 3", "app --token *** --epochs 3"},
		{"app --password hunter2", "app --password ***"},
		{"app -p hunter2", "app -p hunter2"}, // no name to go by
		{"app --db-password=x --verbose", "app --db-password=*** --verbose"},
		{"app --api-key=K --secret S", "app --api-key=*** --secret ***"},
		{"env AWS_SECRET_ACCESS_KEY=abc WANDB_API_KEY=def HF_TOKEN=ghi EPOCHS=3 python x.py", "env AWS_SECRET_ACCESS_KEY=*** WANDB_API_KEY=*** HF_TOKEN=*** EPOCHS=3 python x.py"},
		{"git clone https://alice:s3cr3t@github.com/x/y", "git clone https://alice:***@github.com/x/y"},
		{"app --password --next", "app --password --next"}, // a flag, not a value
		{"app --keyboard-layout=us", "app --keyboard-layout=us"},
		{"app --monkey=1", "app --monkey=1"},
		{"app --ssh-key=/home/a/.ssh/id", "app --ssh-key=***"},
		{"/usr/bin/token-server --port 1", "/usr/bin/token-server --port 1"},
	} {
		got := strings.Join(Args(strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}
