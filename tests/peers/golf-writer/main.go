// golf-writer: sends numbered GELF messages with github.com/aphistic/golf, a Go GELF client
// written apart from Graylog's go-gelf (which tests/peers/gelf-reader uses to read).
//
//	golf-writer -addr udp://127.0.0.1:12201?compress=gzip|zlib|none -n 100 [-size BYTES]
//	            [-chunk-size 1420] [-no-host] [-level 4]
//
// Message i: short_message "golf <i> <padding to -size>", level -level, _seq i, _client
// "golf"; host is os.Hostname() unless -no-host (then ""). Exit 0 once Close returned (golf
// flushes its queue on Close).
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/aphistic/golf"
)

func main() {
	addr := flag.String("addr", "udp://127.0.0.1:12201", "GELF server URI (golf speaks UDP; ?compress=gzip|zlib|none)")
	n := flag.Int("n", 10, "messages to send")
	size := flag.Int("size", 0, "pad each short_message to this many bytes")
	chunkSize := flag.Int("chunk-size", 1420, "ClientConfig.ChunkSize")
	noHost := flag.Bool("no-host", false, "send an empty host")
	level := flag.Int("level", golf.LEVEL_INFO, "GELF level")
	flag.Parse()

	c, err := golf.NewClientWithConfig(golf.ClientConfig{ChunkSize: *chunkSize, Compression: golf.COMP_GZIP})
	if err != nil {
		fail(err)
	}
	if err := c.Dial(*addr); err != nil {
		fail(err)
	}
	l, err := c.NewLogger()
	if err != nil {
		fail(err)
	}
	l.SetAttr("client", "golf")
	for i := 0; i < *n; i++ {
		m := l.NewMessage()
		m.Level = *level
		m.ShortMessage = fmt.Sprintf("golf %d", i)
		if pad := *size - len(m.ShortMessage); pad > 0 {
			m.ShortMessage += " " + strings.Repeat(fmt.Sprintf("%x", i%16), pad-1)
		}
		if *noHost {
			m.Hostname = ""
		}
		m.Attrs["seq"] = i
		if err := c.QueueMsg(m); err != nil {
			fail(err)
		}
	}
	if err := c.Close(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "golf-writer:", err)
	os.Exit(1)
}
