// Command helper is the only program inside the test images: "sleep" waits
// for a signal, "exit N" exits with N, "gpu" sleeps too (it is what the NVML
// mock reports as a GPU process), "spin" keeps one core busy.
package main

import (
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "exit" {
		n, _ := strconv.Atoi(os.Args[2])
		os.Exit(n)
	}
	if len(os.Args) > 1 && os.Args[1] == "spin" {
		go func() {
			for n := 0; ; n++ {
				_ = n
			}
		}()
	}
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
