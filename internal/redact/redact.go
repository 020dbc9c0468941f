// Package redact hides secrets in command lines before they reach the state
// file, the event log or the journal: values of secret-looking options
// (--token=…, --password …, --passphrase, --pwd), secret environment
// assignments (HF_TOKEN=…, *_KEY=…, GITHUB_PAT=…), credentials in URLs
// (user:pass@, token@), HTTP authorization headers, key=value pairs in
// connection and query strings (…;AccountKey=…, ?sig=…), JSON password
// fields, password options of a few well-known clients (mysql -pS,
// sshpass -p S, redis-cli -a S), and bare tokens with a well-known prefix
// (hf_, ghp_, github_pat_, glpat-, xoxb-, sk-, AKIA…, JWTs).
//
// A process may rewrite its title into one string ("python train.py
// --token S" as a single argument): such an argument is split into words
// and redacted like a command line.
package redact

import (
	"path"
	"regexp"
	"strings"
)

// Mask replaces a secret value.
const Mask = "***"

// A name is secret-looking when a component of it (split at -, _ and .,
// and at lower-to-upper case changes) is one of these, or it contains one
// of the longer words.
var (
	secretParts = map[string]bool{
		"token": true, "password": true, "passwd": true, "passphrase": true, "pass": true,
		"pwd": true, "pw": true, "secret": true, "secrets": true, "key": true, "apikey": true, "credential": true,
		"credentials": true, "auth": true, "pat": true, "sig": true, "signature": true, "cookie": true,
		"accountkey": true, "sharedaccesskey": true, "accesskey": true, "privatekey": true, "sas": true,
	}
	secretWords = regexp.MustCompile(`(?i)(passw(or)?d|passphrase|secret|api[-_]?key|access[-_]?key|private[-_]?key|credential)`)

	envName    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	camelSplit = regexp.MustCompile(`([a-z0-9])([A-Z])`)

	// scheme://userinfo@host: the userinfo runs to the last @ of the
	// authority; a password may hold / or @.
	urlWithAt = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s]*)@`)
	// Authorization: Bearer S, X-Api-Key: S, Cookie: S (curl -H, --header=).
	header = regexp.MustCompile(`(?i)\b((?:proxy-)?authorization|x-api-key|x-auth-token|api-key|private-token|cookie)(\s*:\s*)(.+)$`)
	bearer = regexp.MustCompile(`(?i)\b(bearer|basic|token)(\s+)([A-Za-z0-9._~+/=-]{8,})`)
	// name=value inside a longer argument: connection strings (;), query
	// strings (? &) and comma lists.
	pair = regexp.MustCompile(`([;?&,]\s*|^)([A-Za-z][A-Za-z0-9_.-]*)=([^;&,\s]*)`)
	// "password": "S" in JSON.
	jsonField = regexp.MustCompile(`"([^"]{1,64})"(\s*:\s*)"((?:[^"\\]|\\.)*)"`)
	// Tokens that announce themselves.
	knownToken = regexp.MustCompile(`\b(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{20,}|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})`)

	// Clients whose short option carries a password: program → option.
	passwordShort = map[string]string{
		"mysql": "-p", "mysqldump": "-p", "mysqladmin": "-p", "mariadb": "-p", "mariadb-dump": "-p", "mysqlimport": "-p",
		"sshpass": "-p", "redis-cli": "-a", "keydb-cli": "-a",
	}
	// For these the option takes its value attached (mysql -pS); a word
	// after a bare -p is the database name.
	attachedOnly = map[string]bool{"mysql": true, "mysqldump": true, "mysqladmin": true, "mariadb": true, "mariadb-dump": true, "mysqlimport": true}
)

// IsSecretName reports whether an option or variable name looks like it
// carries a secret.
func IsSecretName(name string) bool {
	name = strings.Trim(name, "-")
	if name == "" {
		return false
	}
	if secretWords.MatchString(name) {
		return true
	}
	split := camelSplit.ReplaceAllString(name, "${1}_${2}")
	for _, p := range strings.FieldsFunc(strings.ToLower(split), func(r rune) bool { return r == '-' || r == '_' || r == '.' }) {
		if secretParts[p] {
			return true
		}
	}
	return false
}

// Args returns argv with secrets masked. argv[0] is kept, except for
// known tokens and URL credentials in it.
func Args(argv []string) []string {
	if len(argv) == 1 && strings.ContainsAny(argv[0], " \t") {
		// A rewritten process title: redact its words as a command line.
		return []string{strings.Join(words(strings.Fields(argv[0])), " ")}
	}
	out := words(argv)
	for i := 1; i < len(out); i++ {
		if strings.ContainsAny(out[i], " \t") && !header.MatchString(out[i]) {
			out[i] = strings.Join(words(append([]string{""}, strings.Fields(out[i])...))[1:], " ")
		}
	}
	return out
}

// words redacts a command line given as words.
func words(argv []string) []string {
	out := make([]string, len(argv))
	prog := ""
	if len(argv) > 0 {
		prog = path.Base(argv[0])
	}
	short, hasShort := passwordShort[prog]
	maskNext := false
	for i, a := range argv {
		switch {
		case i == 0:
			out[i] = a
			if !strings.HasPrefix(a, "-") && strings.Contains(a, "=") { // NAME=value first: a rewritten title
				out[i] = option(a, &maskNext)
			}
		case maskNext:
			maskNext = false
			if strings.HasPrefix(a, "--") {
				out[i] = option(a, &maskNext) // a flag, not a value
			} else {
				out[i] = Mask
			}
		case hasShort && a == short && !attachedOnly[prog]:
			out[i], maskNext = a, true
		case hasShort && strings.HasPrefix(a, short) && len(a) > len(short) && !strings.HasPrefix(a, "--"):
			out[i] = short + Mask
		default:
			out[i] = option(a, &maskNext)
		}
		out[i] = inText(out[i])
	}
	return out
}

// option masks the value of a secret-looking option or assignment, and
// says through maskNext when the value is the next word.
func option(a string, maskNext *bool) string {
	if strings.HasPrefix(a, "-") {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !IsSecretName(name) {
			return a
		}
		if hasValue {
			if header.MatchString(value) { // --header=Authorization: …
				return a
			}
			return a[:strings.Index(a, "=")+1] + Mask
		}
		*maskNext = true // --password value
		return a
	}
	if name, _, ok := strings.Cut(a, "="); ok && envName.MatchString(name) && IsSecretName(name) {
		return name + "=" + Mask
	}
	return a
}

// inText masks secrets that can appear anywhere inside one argument.
func inText(a string) string {
	a = knownToken.ReplaceAllString(a, Mask)
	a = urlWithAt.ReplaceAllStringFunc(a, func(m string) string {
		sm := urlWithAt.FindStringSubmatch(m)
		scheme, info := sm[1], sm[2]
		if i := strings.IndexByte(info, '/'); i >= 0 && !strings.Contains(info[:i], ":") {
			return m // a path with an @ in it (pkg@1.0), not credentials
		}
		if info == Mask {
			return m
		}
		if user, _, ok := strings.Cut(info, ":"); ok && user != "" && !strings.ContainsAny(user, "/@") {
			return scheme + user + ":" + Mask + "@"
		}
		return scheme + Mask + "@"
	})
	if m := header.FindStringSubmatchIndex(a); m != nil {
		a = a[:m[5]] + Mask
	}
	a = bearer.ReplaceAllString(a, "${1}${2}"+Mask)
	if strings.ContainsAny(a, ";?&,") {
		a = pair.ReplaceAllStringFunc(a, func(m string) string {
			sm := pair.FindStringSubmatch(m)
			if sm[3] == "" || sm[3] == Mask || !IsSecretName(sm[2]) {
				return m
			}
			return sm[1] + sm[2] + "=" + Mask
		})
	}
	if strings.Contains(a, `"`) {
		a = jsonField.ReplaceAllStringFunc(a, func(m string) string {
			sm := jsonField.FindStringSubmatch(m)
			if !IsSecretName(sm[1]) {
				return m
			}
			return `"` + sm[1] + `"` + sm[2] + `"` + Mask + `"`
		})
	}
	return a
}
