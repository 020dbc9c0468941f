// Package redact hides the values of secret-looking command-line
// arguments (--token=…, --password …, *_KEY=…, user:pass@ in URLs) before a
// command line reaches the state file, the event log or the journal.
package redact

import (
	"regexp"
	"strings"
)

// Mask replaces a secret value.
const Mask = "***"

var (
	// secretName matches option and variable names that carry secrets.
	secretName = regexp.MustCompile(`(?i)(token|passw(or)?d|passwd|secret|api[-_]?key|access[-_]?key|private[-_]?key|credential|auth)`)
	// envKey matches NAME=value assignments whose NAME ends or starts
	// with KEY (AWS_SECRET_ACCESS_KEY=…, KEY_FILE is not a secret value
	// but masking it costs nothing).
	envKey   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	keyish   = regexp.MustCompile(`(?i)(^|_)KEY($|_)`)
	urlCreds = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+):[^@/\s]+@`)
)

func isSecretName(name string) bool {
	return secretName.MatchString(name) || keyish.MatchString(strings.ReplaceAll(name, "-", "_"))
}

// Args returns argv with secret values masked. argv[0] is left alone.
func Args(argv []string) []string {
	out := make([]string, len(argv))
	maskNext := false
	for i, a := range argv {
		switch {
		case i == 0:
			out[i] = a
		case maskNext && !strings.HasPrefix(a, "-"):
			out[i] = Mask
			maskNext = false
		default:
			maskNext = false
			out[i] = arg(a, &maskNext)
		}
		out[i] = urlCreds.ReplaceAllString(out[i], "${1}:"+Mask+"@")
	}
	return out
}

func arg(a string, maskNext *bool) string {
	if strings.HasPrefix(a, "-") {
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !isSecretName(name) {
			return a
		}
		if hasValue {
			return a[:strings.Index(a, "=")+1] + Mask
		}
		*maskNext = true // --password value
		return a
	}
	if name, _, ok := strings.Cut(a, "="); ok && envKey.MatchString(name) && isSecretName(name) {
		return name + "=" + Mask
	}
	return a
}
