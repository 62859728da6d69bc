// Command weft-httpapp is a tiny HTTP server for weft demos and tests. It
// answers every request with "hello from $CF_INSTANCE_INTERNAL_IP (app
// $WEFT_APP)" and logs each request to stderr.
//
//	weft run --app appB -- weft-httpapp -port 8080
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
)

func main() {
	port := 8080
	if p, err := strconv.Atoi(os.Getenv("PORT")); err == nil {
		port = p
	}
	flag.IntVar(&port, "port", port, "TCP port to listen on (default $PORT, else 8080)")
	flag.Parse()

	ip, app := os.Getenv("CF_INSTANCE_INTERNAL_IP"), os.Getenv("WEFT_APP") // both set by `weft run`
	greeting := fmt.Sprintf("hello from %s (app %s)\n", ip, app)
	log.SetPrefix("weft-httpapp: ")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s %s", r.RemoteAddr, r.Method, r.URL.Path)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, greeting)
	})
	addr := ":" + strconv.Itoa(port)
	log.Printf("listening on %s as %s (app %s)", addr, ip, app)
	log.Fatal(http.ListenAndServe(addr, nil))
}
