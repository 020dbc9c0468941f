package bounded

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// One of Docker's list entries, with the fields List skips.
const listEntry = `{"Id":"4f1a","Names":["/train"],"Image":"pytorch","ImageID":"sha256:1","Command":"python train.py",
"Created":1700000000,"Ports":[{"PrivatePort":22,"Type":"tcp"}],"Labels":{"ds01.user":"alice","x":"y"},
"State":"running","Status":"Up 2 hours","HostConfig":{"NetworkMode":"bridge"},
"NetworkSettings":{"Networks":{"bridge":{"IPAddress":"172.17.0.2","Aliases":null}}},
"Mounts":[{"Type":"bind","Source":"/home/alice","Destination":"/w","RW":true}]}`

// DecodeSummaries keeps Id, Names and State of each entry and skips the
// rest; anything that is not one well-formed array of entries with an Id
// is an error, not a shorter list.
func TestDecodeSummaries(t *testing.T) {
	two := "[" + listEntry + ",\n " + strings.Replace(listEntry, `"4f1a"`, `"9c2e"`, 1) + "]\n"
	got, err := DecodeSummaries(strings.NewReader(two))
	want := []Summary{{ID: "4f1a", Names: []string{"/train"}, State: "running"}, {ID: "9c2e", Names: []string{"/train"}, State: "running"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, %v; want %+v", got, err, want)
	}
	if got, err := DecodeSummaries(strings.NewReader("[]")); err != nil || len(got) != 0 {
		t.Errorf("empty list: %+v, %v", got, err)
	}
	for name, body := range map[string]string{
		"empty":            "",
		"object":           `{"message":"no"}`,
		"cut":              "[" + listEntry[:len(listEntry)/2],
		"unclosed":         "[" + listEntry,
		"trailing":         "[" + listEntry + "] []",
		"not an object":    `["4f1a"]`,
		"no id":            `[{"Names":["/x"],"State":"running"}]`,
		"wrong field type": `[{"Id":"4f1a","Names":"/x"}]`,
	} {
		if got, err := DecodeSummaries(strings.NewReader(body)); err == nil {
			t.Errorf("%s: %+v, want an error", name, got)
		}
	}
}

// TakeList takes the list's body from the transport (the client
// decodes an empty array) and reads it through the same bounds as before.
func TestListSummariesTakesTheBody(t *testing.T) {
	body := "[" + listEntry + "]"
	tr := Transport{Next: bodyTransport(body)}
	req, _ := http.NewRequest(http.MethodGet, "http://docker/v1.41/containers/json?all=1", nil)
	ctx, tk := TakeList(req.Context())
	resp, err := tr.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	var rest []json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&rest); err != nil || len(rest) != 0 || tk.Body == nil {
		t.Fatalf("the client got %d entries (%v); taken: %v", len(rest), err, tk.Body != nil)
	}
	got, err := DecodeSummaries(tk.Body)
	if err != nil || len(got) != 1 || got[0].ID != "4f1a" {
		t.Errorf("taken body: %+v, %v", got, err)
	}
}

// Whatever DecodeSummaries accepts, encoding/json reads the same way; and
// it accepts every array of entries with an Id that encoding/json reads.
func FuzzDecodeSummaries(f *testing.F) {
	f.Add([]byte("[" + listEntry + "]"))
	f.Add([]byte(`[{"Id":"a","Names":null,"State":""},{"Id":"b"}]`))
	f.Add([]byte(`[{"Id":"a","Id":"b"}]`))
	f.Add([]byte(`[] `))
	f.Add([]byte(`[{"id":"a","NAMES":["/x"]}]`))
	// The entries DecodeSummaries leaves to encoding/json, and the values
	// it checks itself while skipping them.
	f.Add([]byte(`[{"Id":"a","ID":"b"},{"Id":"c","\u0049d":"d"},{"Id":"e","ſtate":"x"}]`))
	f.Add([]byte(`[{"Id":"a\u0062","Names":["/\u00e9","/é"],"State":"r\n"}]`))
	f.Add([]byte(`[{"Id":"a","Names":[null],"State":null},{"Id":"b","Names":[],"Id":null}]`))
	f.Add([]byte(`[{"Id":"a","x":[[[[{}]]],[]],"y":-0.5e+10,"z":true,"w":false,"v":null,"u":{"k":[1,2.0,"s"]}}]`))
	f.Add([]byte(`[{"Id":"a","x":01}]`))
	f.Add([]byte("[{\"Id\":\"a\",\"x\":\"\x01\"}]"))
	f.Add([]byte(`[{"Id":"a","x":"\q"}, {"Id":"b"}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeSummaries(strings.NewReader(string(b)))
		// Read a byte at a time through a window that starts at one byte,
		// every entry spans reads: the same answer.
		small, smallErr := decodeSummaries(iotest.OneByteReader(strings.NewReader(string(b))), 1)
		if (err == nil) != (smallErr == nil) || !reflect.DeepEqual(got, small) {
			t.Fatalf("whole: %+v, %v; a byte at a time: %+v, %v", got, err, small, smallErr)
		}
		var ref []Summary
		refErr := json.Unmarshal(b, &ref)
		if refErr == nil && ref != nil {
			for _, c := range ref {
				if c.ID == "" {
					refErr = errNoID
				}
			}
		}
		switch {
		case err == nil && refErr != nil:
			t.Fatalf("accepted what encoding/json does not (%v): %+v", refErr, got)
		case err == nil && ref == nil:
			t.Fatalf("accepted %q, which is not an array", b)
		case err == nil && len(got)+len(ref) > 0 && !reflect.DeepEqual(got, ref):
			t.Fatalf("got %+v, encoding/json %+v", got, ref)
		case err != nil && refErr == nil && ref != nil:
			t.Fatalf("refused (%v) what encoding/json reads: %+v", err, ref)
		}
	})
}

var errNoID = errors.New("an entry without an Id")
