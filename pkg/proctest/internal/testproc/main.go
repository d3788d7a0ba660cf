// Command testproc is the process that proctest's own tests run. It prints its
// arguments and $TESTPROC_ECHO; with -exit N it then exits with status N at once,
// otherwise it serves GET /healthz on $TESTPROC_ADDR (when set) until SIGTERM, on which
// it exits 0.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	exit := flag.Int("exit", -1, "exit at once with this status")
	flag.Parse()
	fmt.Printf("args %q echo %q\n", flag.Args(), os.Getenv("TESTPROC_ECHO"))
	if *exit >= 0 {
		os.Exit(*exit)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	if addr := os.Getenv("TESTPROC_ADDR"); addr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", func(http.ResponseWriter, *http.Request) {})
		go func() {
			if err := http.ListenAndServe(addr, mux); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
		}()
	}
	<-stop
	fmt.Println("stopping")
}
