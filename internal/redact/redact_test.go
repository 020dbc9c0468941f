package redact

import (
	"strings"
	"testing"
)

// S is the secret in every case below: it must not survive anywhere in the
// output.
const S = "Zq9xSecretV4lue"

// cmd builds argv from words; a word wrapped in [ ] is one argument with
// spaces in it.
func cmd(s string) []string {
	var out []string
	for s != "" {
		s = strings.TrimLeft(s, " ")
		if strings.HasPrefix(s, "[") {
			end := strings.Index(s, "]")
			out = append(out, s[1:end])
			s = s[end+1:]
			continue
		}
		w, rest, _ := strings.Cut(s, " ")
		out = append(out, w)
		s = rest
	}
	return out
}

func TestSecretsAreMasked(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		// options
		{"--token=", "python serve.py --token=" + S},
		{"--token value", "python serve.py --token " + S + " --epochs 3"},
		{"--password value", "app --password " + S},
		{"--password=", "app --password=" + S},
		{"--password -S", "app --password -" + S},
		{"--db-password=", "app --db-password=" + S + " --verbose"},
		{"--api-key=", "app --api-key=" + S},
		{"--apiKey value", "app --apiKey " + S},
		{"--secret value", "app --secret " + S},
		{"--passphrase value", "gpg --batch --passphrase " + S + " -d f.gpg"},
		{"--passphrase=", "gpg --passphrase=" + S},
		{"--pwd=", "tool --pwd=" + S},
		{"--pass value", "tool --pass " + S},
		{"--auth value", "tool --auth " + S},
		{"--ssh-key=", "app --ssh-key=" + S},
		{"--access-key value", "s3cmd --access-key " + S},
		{"--client-secret=", "az login --client-secret=" + S},
		// well-known clients
		{"mysql -pS", "mysql -u root -p" + S + " db"},
		{"mysqldump -pS", "/usr/bin/mysqldump -p" + S + " --all-databases"},
		{"sshpass -p S", "sshpass -p " + S + " ssh host"},
		{"sshpass -pS", "sshpass -p" + S + " ssh host"},
		{"redis-cli -a S", "redis-cli -h cache -a " + S + " ping"},
		// environment
		{"HF_TOKEN=", "env HF_TOKEN=" + S + " python x.py"},
		{"AWS_SECRET_ACCESS_KEY=", "env AWS_SECRET_ACCESS_KEY=" + S + " aws s3 ls"},
		{"WANDB_API_KEY=", "env WANDB_API_KEY=" + S + " python x.py"},
		{"GITHUB_PAT=", "env GITHUB_PAT=" + S + " make"},
		{"PGPASSWORD=", "env PGPASSWORD=" + S + " psql"},
		// headers
		{"curl -H Authorization: Bearer", "curl -H [Authorization: Bearer " + S + "] https://api.example.com"},
		{"--header=Authorization: Bearer", "curl [--header=Authorization: Bearer " + S + "] https://api.example.com"},
		{"-H X-Api-Key:", "curl -H [X-Api-Key: " + S + "] https://api.example.com"},
		{"Authorization: Basic", "wget [--header=Authorization: Basic " + S + "] https://x"},
		// URLs
		{"user:pass@", "git clone https://alice:" + S + "@github.com/x/y"},
		{"token@", "git clone https://ghp_" + S + "abcdefghij12345@github.com/x/y"},
		{"bare token userinfo", "git clone https://" + S + "@github.com/x/y"},
		{"password with /", "git clone https://alice:ab/" + S + "@gitlab.example.com/x/y"},
		{"password with @", "psql postgresql://bob:p@" + S + "@db:5432/app"},
		{"query sig", "azcopy copy https://acct.blob.core.windows.net/c?sv=2020&sig=" + S + " ."},
		// connection strings and JSON
		{";AccountKey=", "app --conn DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=" + S + ";EndpointSuffix=core.windows.net"},
		{";Password=", "app [Server=db;Database=x;User Id=sa;Password=" + S + ";]"},
		{"JSON password", `app --config {"user":"bob","password":"` + S + `"}`},
		{"JSON api_key", `app [{"api_key": "` + S + `", "epochs": 3}]`},
		// bare tokens
		{"bare hf_", "python push.py hf_" + S + "abcdefghijklmn"},
		{"bare ghp_", "python push.py ghp_" + S + "abcdefghijklmn"},
		{"bare github_pat_", "tool github_pat_" + S + "abcdefghijklmn"},
		{"bare sk-", "python chat.py sk-" + S + "abcdefghijklmn"},
		{"bare xoxb-", "notify xoxb-12345-" + S},
		{"JWT", "app eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0." + S},
		// a rewritten process title
		{"title in one argument", "[python train.py --token " + S + " --epochs 3]"},
		{"title with env", "[HF_TOKEN=" + S + " python train.py]"},
	} {
		argv := cmd(tc.in)
		got := strings.Join(Args(argv), " ")
		if strings.Contains(got, S) || !strings.Contains(got, Mask) {
			t.Errorf("%s: %q\n   -> %q", tc.name, tc.in, got)
		}
	}
}

func TestOrdinaryArgumentsStayReadable(t *testing.T) {
	for _, in := range []string{
		"python train.py --epochs 90",
		"python train.py --lr=3e-4 --batch-size 64",
		"python train.py --model meta-llama/Llama-3-8B --max-tokens 512",
		"python train.py --tokenizer gpt2 --num-keys 4",
		"jupyter lab --port 8888 --ip 0.0.0.0 --no-browser",
		"docker run -p 8888:8888 -v /data:/data img",
		"ssh -p 2222 host",
		"python /home/alice/proj/train.py --data /scratch/alice/imagenet",
		"torchrun --nproc_per_node=8 --master_port=29500 train.py",
		"python eval.py --checkpoint ckpt/epoch=12-step=3400.ckpt",
		"pip install git+https://github.com/org/repo@v1.2.3",
		"npm install https://registry.example.com/pkg@1.0",
		"python app.py --keyboard-layout=us --monkey=1",
		"/usr/bin/token-server --port 1",
		"python serve.py --password-file /run/secrets/db --workers 4",
		"mysql -u root -p db",
		"env CUDA_VISIBLE_DEVICES=0,1 NCCL_DEBUG=INFO python x.py",
		"[python train.py --epochs 3 --lr 0.1]",
	} {
		argv := cmd(in)
		want := strings.Join(argv, " ")
		if in == "python serve.py --password-file /run/secrets/db --workers 4" {
			// The file's path is masked too; the rest stays.
			want = "python serve.py --password-file *** --workers 4"
		}
		if got := strings.Join(Args(argv), " "); got != want {
			t.Errorf("%q\n   -> %q", want, got)
		}
	}
}
