package gputest

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// Guard wraps a mock server, counts Init and Shutdown, and fails the test
// on any call made while NVML is not initialised: on a machine without the
// driver, such a call kills the process with an undefined symbol.
type Guard struct {
	*server.Server
	t           testing.TB
	initRet     *nvml.Return
	Inits       int
	Shutdowns   int
	Initialised bool
	// FailCount, when not SUCCESS, is what DeviceGetCount returns.
	FailCount nvml.Return
}

// NewGuard wraps s. Init returns *initRet.
func NewGuard(t testing.TB, s *server.Server, initRet *nvml.Return) *Guard {
	return &Guard{Server: s, t: t, initRet: initRet, FailCount: nvml.SUCCESS}
}

func (g *Guard) Init() nvml.Return {
	g.Inits++
	if *g.initRet == nvml.SUCCESS {
		g.Initialised = true
	}
	return *g.initRet
}

func (g *Guard) Shutdown() nvml.Return {
	g.Shutdowns++
	g.Initialised = false
	return nvml.SUCCESS
}

func (g *Guard) check(call string) {
	if !g.Initialised {
		g.t.Errorf("%s called while NVML is not initialised", call)
	}
}

func (g *Guard) Extensions() nvml.ExtendedInterface {
	g.check("Extensions")
	return g.Server.Extensions()
}

func (g *Guard) DeviceGetCount() (int, nvml.Return) {
	g.check("DeviceGetCount")
	if g.FailCount != nvml.SUCCESS {
		return 0, g.FailCount
	}
	return g.Server.DeviceGetCount()
}

func (g *Guard) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	g.check("DeviceGetHandleByIndex")
	return g.Server.DeviceGetHandleByIndex(i)
}
