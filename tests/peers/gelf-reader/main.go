// gelf-reader: a GELF receiver built on Graylog's own Go library (github.com/Graylog2/go-gelf),
// used by the tests as a decoder we did not write.
//
//	gelf-reader [-udp 127.0.0.1:0] [-tcp 127.0.0.1:0] [-tls-cert C -tls-key K] [-rcvbuf 8388608]
//
// The first line on stdout is {"udp": "HOST:PORT", "tcp": "HOST:PORT"}; then one line per
// message: {"transport": "udp"|"tcp", "message": {...}} where message is go-gelf's decoded
// gelf.Message re-encoded by go-gelf itself, or {"transport": ..., "error": "..."}.
//
// UDP is read by gelf.Reader (chunked, gzip, zlib, plain). go-gelf's TCP reader is not
// exported, so TCP frames are split on the null byte exactly as its handleConnection does
// (bufio.Reader.ReadBytes(0)) and decoded with gelf.Message's own UnmarshalJSON, as its
// readMessage does.  With -tls-cert/-tls-key the TCP listener speaks TLS (crypto/tls).
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"reflect"
	"sync"
	"unsafe"

	"github.com/Graylog2/go-gelf/gelf"
)

var (
	mu  sync.Mutex
	out = bufio.NewWriter(os.Stdout)
)

func emit(v map[string]interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	mu.Lock()
	defer mu.Unlock()
	out.Write(b)
	out.WriteByte('\n')
	out.Flush()
}

func emitMessage(transport string, m *gelf.Message) {
	var buf bytes.Buffer
	if err := m.MarshalJSONBuf(&buf); err != nil {
		emit(map[string]interface{}{"transport": transport, "error": "re-encode: " + err.Error()})
		return
	}
	emit(map[string]interface{}{"transport": transport, "message": json.RawMessage(buf.Bytes())})
}

// setReadBuffer enlarges the receive buffer of gelf.Reader's (unexported) socket, so that a
// burst from the sink under test is not dropped by the kernel before go-gelf reads it.
func setReadBuffer(r *gelf.Reader, size int) {
	f := reflect.ValueOf(r).Elem().FieldByName("conn")
	conn := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface()
	if c, ok := conn.(*net.UDPConn); ok {
		c.SetReadBuffer(size)
	}
}

func serveTCP(l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func(c net.Conn) {
			defer c.Close()
			reader := bufio.NewReader(c)
			for {
				b, err := reader.ReadBytes(0)
				if len(b) > 1 {
					var m gelf.Message
					if b[len(b)-1] == 0 {
						b = b[:len(b)-1]
					}
					if jerr := json.Unmarshal(b, &m); jerr != nil {
						emit(map[string]interface{}{"transport": "tcp", "error": "json.Unmarshal: " + jerr.Error()})
					} else {
						emitMessage("tcp", &m)
					}
				}
				if err != nil {
					return
				}
			}
		}(conn)
	}
}

func main() {
	udpAddr := flag.String("udp", "127.0.0.1:0", "UDP address to read GELF on (empty: none)")
	tcpAddr := flag.String("tcp", "", "TCP address to read GELF on (empty: none)")
	rcvbuf := flag.Int("rcvbuf", 8<<20, "UDP receive buffer in bytes")
	tlsCert := flag.String("tls-cert", "", "PEM certificate: serve TLS on the TCP address")
	tlsKey := flag.String("tls-key", "", "PEM key of -tls-cert")
	flag.Parse()

	ready := map[string]interface{}{}
	var r *gelf.Reader
	if *udpAddr != "" {
		var err error
		r, err = gelf.NewReader(*udpAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		setReadBuffer(r, *rcvbuf)
		ready["udp"] = r.Addr()
	}
	if *tcpAddr != "" {
		l, err := net.Listen("tcp", *tcpAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if *tlsCert != "" {
			cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}})
		}
		ready["tcp"] = l.Addr().String()
		go serveTCP(l)
	}
	emit(ready)
	if r == nil {
		select {}
	}
	for {
		m, err := r.ReadMessage()
		if err != nil {
			emit(map[string]interface{}{"transport": "udp", "error": err.Error()})
			continue
		}
		emitMessage("udp", m)
	}
}
