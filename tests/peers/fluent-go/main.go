// fluent-go: sends numbered records through github.com/fluent/fluent-logger-golang, the
// forward client Docker's fluentd log driver embeds, with each of its options.
//
//	fluent-go -addr 127.0.0.1:24224 -n 100 -tag go.sync [-async] [-ack] [-json] [-subsecond]
//	          [-prefix P] [-unix PATH] [-buffer-limit N] [-post-with-time]
//
// Record i is {"message": "<tag> <i>", "seq": i, "level": "info", "hostname": <-hostname>}
// (hostname only when given). Exit 0 once Close returned with every record posted (in async
// mode Close flushes the buffer); non-zero with the error otherwise.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/fluent/fluent-logger-golang/fluent"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:24224", "host:port of the forward server")
	unix := flag.String("unix", "", "a Unix socket path instead of -addr")
	n := flag.Int("n", 10, "records to send")
	tag := flag.String("tag", "go.test", "the tag")
	async := flag.Bool("async", false, "Config.Async")
	ack := flag.Bool("ack", false, "Config.RequestAck")
	asJSON := flag.Bool("json", false, "Config.MarshalAsJSON")
	subsecond := flag.Bool("subsecond", false, "Config.SubSecondPrecision")
	prefix := flag.String("prefix", "", "Config.TagPrefix")
	bufferLimit := flag.Int("buffer-limit", 0, "Config.BufferLimit (0: the library's default)")
	hostname := flag.String("hostname", "", "a hostname field in each record")
	withTime := flag.Bool("post-with-time", false, "PostWithTime at 2024-05-01T12:00:00.123456789Z + i s")
	flag.Parse()

	cfg := fluent.Config{
		Async:              *async,
		RequestAck:         *ack,
		MarshalAsJSON:      *asJSON,
		SubSecondPrecision: *subsecond,
		TagPrefix:          *prefix,
		BufferLimit:        *bufferLimit,
		Timeout:            10 * time.Second,
		WriteTimeout:       10 * time.Second,
		MaxRetry:           5,
	}
	if *unix != "" {
		cfg.FluentNetwork = "unix"
		cfg.FluentSocketPath = *unix
	} else {
		host, port, ok := strings.Cut(*addr, ":")
		if !ok {
			fail(fmt.Errorf("-addr needs host:port"))
		}
		cfg.FluentHost = host
		fmt.Sscanf(port, "%d", &cfg.FluentPort)
	}
	logger, err := fluent.New(cfg)
	if err != nil {
		fail(err)
	}
	base := time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)
	for i := 0; i < *n; i++ {
		rec := map[string]interface{}{"message": fmt.Sprintf("%s %d", *tag, i), "seq": i, "level": "info"}
		if *hostname != "" {
			rec["hostname"] = *hostname
		}
		if *withTime {
			err = logger.PostWithTime(*tag, base.Add(time.Duration(i)*time.Second), rec)
		} else {
			err = logger.Post(*tag, rec)
		}
		if err != nil {
			fail(fmt.Errorf("record %d: %w", i, err))
		}
	}
	if err := logger.Close(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "fluent-go:", err)
	os.Exit(1)
}
