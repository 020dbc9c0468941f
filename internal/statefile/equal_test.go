package statefile

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Equal must look at every field: changing any one of them, at any depth
// the state file shows, makes two values unequal.
func TestEqualSeesEveryField(t *testing.T) {
	base := inventory.Container{GPUProcesses: []inventory.GPUProcess{{}}, UserSignals: []inventory.UserSignal{{}}, OwnerSeconds: []inventory.OwnerSeconds{{}}}
	for _, path := range fieldPaths(reflect.TypeOf(base), nil) {
		c := base
		c.GPUProcesses = []inventory.GPUProcess{{}}
		c.UserSignals = []inventory.UserSignal{{}}
		c.OwnerSeconds = []inventory.OwnerSeconds{{}}
		b := base
		b.GPUProcesses = []inventory.GPUProcess{{}}
		b.UserSignals = []inventory.UserSignal{{}}
		b.OwnerSeconds = []inventory.OwnerSeconds{{}}
		if len(path) > 0 && slices.Contains(path, -2) {
			// Both hold the pointer (allocated fresh in each), and one
			// field inside differs.
			alloc(reflect.ValueOf(&b).Elem(), path)
			alloc(reflect.ValueOf(&c).Elem(), path)
		}
		set(reflect.ValueOf(&c).Elem(), path)
		if Equal(&b, &c) || Equal(&c, &b) {
			t.Errorf("Equal does not see %v", path)
		}
	}
	if other := (inventory.Container{GPUProcesses: []inventory.GPUProcess{{}}, UserSignals: []inventory.UserSignal{{}}, OwnerSeconds: []inventory.OwnerSeconds{{}}}); !Equal(&base, &other) {
		t.Error("equal values are not Equal")
	}
}

// fieldPaths lists the paths to every leaf field, going into structs,
// pointers and the first element of slices.
func fieldPaths(t reflect.Type, prefix []int) [][]int {
	var out [][]int
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		p := append(append([]int{}, prefix...), i)
		ft := f.Type
		if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
			out = append(out, fieldPaths(ft.Elem(), append(p, -1))...)
			continue
		}
		timeType := reflect.TypeOf(inventory.Time{})
		if ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct && ft.Elem() != timeType {
			out = append(out, p)                                       // nil against set
			out = append(out, fieldPaths(ft.Elem(), append(p, -2))...) // and each field inside
			continue
		}
		if ft.Kind() == reflect.Struct && ft != timeType {
			out = append(out, fieldPaths(ft, p)...)
			continue
		}
		out = append(out, p)
	}
	return out
}

// set changes the field at path to something other than its zero value.
func set(v reflect.Value, path []int) {
	for i, idx := range path {
		if idx == -1 {
			v = v.Index(0)
			continue
		}
		if idx == -2 { // the same pointer set in both, a field inside changed
			v = v.Elem()
			continue
		}
		v = v.Field(idx)
		if i == len(path)-1 {
			break
		}
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(7)
	case reflect.Uint32, reflect.Uint64:
		v.SetUint(7)
	case reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		if v.Type().Elem().Kind() == reflect.String {
			v.Index(0).SetString("x")
		}
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		switch e := p.Elem(); e.Kind() {
		case reflect.Struct:
			if e.Type() == reflect.TypeOf(inventory.Time{}) {
				e.Set(reflect.ValueOf(inventory.NewTime(time.Unix(7, 0))))
			} // else the zero struct: nil against allocated
		case reflect.Int, reflect.Int64:
			e.SetInt(7)
		case reflect.Float64:
			e.SetFloat(1.5)
		case reflect.Uint32:
			e.SetUint(7)
		}
		v.Set(p)
	case reflect.Struct: // Time
		v.Set(reflect.ValueOf(inventory.NewTime(time.Unix(7, 0))))
	default:
		panic("unhandled kind " + v.Kind().String())
	}
}

// alloc gives every pointer on path (marked -2) a fresh zero value.
func alloc(v reflect.Value, path []int) {
	for _, idx := range path {
		switch idx {
		case -1:
			v = v.Index(0)
		case -2:
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		default:
			v = v.Field(idx)
		}
	}
}
