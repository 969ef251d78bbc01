package collector.peers.graylog;

import com.codahale.metrics.Meter;
import com.codahale.metrics.MetricRegistry;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.google.common.net.InetAddresses;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.embedded.EmbeddedChannel;
import io.netty.handler.codec.Delimiters;
import org.graylog2.inputs.codecs.GelfChunkAggregator;
import org.graylog2.inputs.codecs.GelfCodec;
import org.graylog2.inputs.transports.netty.LenientDelimiterBasedFrameDecoder;
import org.graylog2.plugin.Message;
import org.graylog2.plugin.MessageFactory;
import org.graylog2.plugin.ResolvableInetSocketAddress;
import org.graylog2.plugin.configuration.Configuration;
import org.graylog2.plugin.inputs.codecs.CodecAggregator;
import org.graylog2.plugin.journal.RawMessage;

import java.io.BufferedWriter;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.net.DatagramPacket;
import java.net.DatagramSocket;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * Receives GELF on 127.0.0.1 and runs it through Graylog's own code, as a Graylog 6.1 GELF input does.
 *
 * <pre>
 *   GelfDecode --udp PORT | --tcp PORT --count N --out FILE.ndjson [--timeout SECONDS] [--max-frame BYTES]
 * </pre>
 *
 * UDP: each datagram (read into a 65,535-byte buffer, as Graylog's UdpTransport does) goes to
 * Graylog's {@link GelfChunkAggregator}; each complete message to Graylog's {@link GelfCodec}.
 * TCP: each connection is split into frames by Graylog's {@link LenientDelimiterBasedFrameDecoder} on the
 * null byte with Graylog's default 2 MiB limit (its TcpTransport), each frame goes through the same
 * aggregator (Graylog's TCP inputs have it in their pipeline too) and codec.
 *
 * <p>After decoding, the few lines of Graylog's DecodingProcessor that touch a message are applied
 * (incomplete messages dropped, gl2_remote_ip/port, an empty source replaced by the sender's address),
 * and the message is written as {@link Message#toElasticSearchObject}: the document Graylog
 * indexes. Output: one line per message, {@code {"stored": {...}}}, or {@code {"error": "..."}} with
 * Graylog's own exception text for a message it rejects. Stdout gets one line when listening,
 * {@code {"listening": "udp://127.0.0.1:PORT"}}, and one summary line at the end (the aggregator's
 * counters). Exits 0 after N output lines, 3 after the timeout (default 60 s) with fewer.
 */
public final class GelfDecode {
    private final MetricRegistry metrics = new MetricRegistry();
    private final ScheduledExecutorService scheduler = Executors.newSingleThreadScheduledExecutor(r -> {
        final Thread t = new Thread(r, "daemonScheduler");
        t.setDaemon(true);
        return t;
    });
    private final GelfChunkAggregator aggregator = new GelfChunkAggregator(scheduler, metrics);
    private final GelfCodec codec;
    private final ObjectMapper json = new ObjectMapper();
    private final Meter invalidTimestamps = new Meter();
    private final BufferedWriter out;
    private final int count;
    private final PrintStream stdout = System.out;
    private int written;
    private int invalidChunks;

    private GelfDecode(Path outFile, int count) throws IOException {
        this.out = Files.newBufferedWriter(outFile, StandardCharsets.UTF_8);
        this.count = count;
        this.codec = new GelfCodec(new Configuration(Map.of()), aggregator, messageFactory());
    }

    /** Graylog's DefaultMessageFactory is package-private (Guice injects it): made through reflection. */
    static MessageFactory messageFactory() {
        try {
            final var ctor = Class.forName("org.graylog2.plugin.DefaultMessageFactory").getDeclaredConstructor();
            ctor.setAccessible(true);
            return (MessageFactory) ctor.newInstance();
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot make Graylog's DefaultMessageFactory", e);
        }
    }

    public static void main(String[] args) throws Exception {
        // a class missing from the peer's class path is the harness's defect, not Graylog's answer: stop loudly
        Thread.setDefaultUncaughtExceptionHandler((t, e) -> {
            System.err.println("gelf-decode: " + t.getName() + " died:");
            e.printStackTrace();
            Runtime.getRuntime().halt(1);
        });
        String transport = null;
        int port = -1;
        int count = -1;
        Path outFile = null;
        long timeoutSeconds = 60;
        int maxFrame = 2 * 1024 * 1024; // TcpTransport.DEFAULT_MAX_FRAME_LENGTH
        for (int i = 0; i < args.length; i++) {
            final String a = args[i];
            switch (a) {
                case "--udp", "--tcp" -> {
                    transport = a.substring(2);
                    port = Integer.parseInt(args[++i]);
                }
                case "--count" -> count = Integer.parseInt(args[++i]);
                case "--out" -> outFile = Path.of(args[++i]);
                case "--timeout" -> timeoutSeconds = Long.parseLong(args[++i]);
                case "--max-frame" -> maxFrame = Integer.parseInt(args[++i]);
                default -> usage("unknown argument: " + a);
            }
        }
        if (transport == null || count < 1 || outFile == null) {
            usage("need --udp PORT or --tcp PORT, --count N and --out FILE");
        }
        final GelfDecode d = new GelfDecode(outFile, count);
        final Thread listener = "udp".equals(transport) ? d.udp(port) : d.tcp(port, maxFrame);
        listener.setDaemon(true);
        listener.start();
        final boolean done = d.await(TimeUnit.SECONDS.toMillis(timeoutSeconds));
        d.finish(done);
    }

    private static void usage(String why) {
        System.err.println("gelf-decode: " + why);
        System.err.println("usage: gelf-decode --udp PORT | --tcp PORT --count N --out FILE.ndjson [--timeout S] [--max-frame BYTES]");
        System.exit(2);
    }

    private synchronized boolean await(long millis) throws InterruptedException {
        final long deadline = System.currentTimeMillis() + millis;
        while (written < count) {
            final long left = deadline - System.currentTimeMillis();
            if (left <= 0) {
                return false;
            }
            wait(left);
        }
        return true;
    }

    private synchronized void finish(boolean done) throws IOException {
        out.flush();
        final Map<String, Object> summary = new LinkedHashMap<>();
        summary.put("written", written);
        summary.put("complete", done);
        summary.put("invalid_chunks", invalidChunks);
        final Map<String, Object> counters = new TreeMap<>();
        metrics.getCounters().forEach((name, c) -> counters.put(name.substring(name.lastIndexOf('.') + 1), c.getCount()));
        summary.put("aggregator", counters);
        stdout.println(json.writeValueAsString(Map.of("summary", summary)));
        stdout.flush();
        if (!done) {
            System.err.println("gelf-decode: timed out with " + written + " of " + count + " messages");
        }
        System.exit(done ? 0 : 3);
    }

    private synchronized void write(Map<String, Object> line) {
        if (written >= count) {
            return;
        }
        try {
            out.write(json.writeValueAsString(line));
            out.write('\n');
            out.flush();
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
        written++;
        if (written >= count) {
            notifyAll();
        }
    }

    private void ready(String url) {
        stdout.println("{\"listening\": \"" + url + "\"}");
        stdout.flush();
    }

    // -- what Graylog does with a datagram or a frame --------------------------------------------------------
    private void chunk(byte[] data, InetSocketAddress sender) {
        final CodecAggregator.Result result;
        try {
            result = aggregator.addChunk(Unpooled.wrappedBuffer(data));
        } catch (RuntimeException e) { // e.g. a 1-byte frame: GELFMessage.getGELFType() throws
            error("GelfChunkAggregator: " + e);
            return;
        }
        final ByteBuf complete = result.getMessage();
        if (complete != null) {
            final byte[] bytes = new byte[complete.readableBytes()];
            complete.readBytes(bytes);
            if (bytes.length == 0) { // MessageInput.processRawMessage discards empty messages
                error("MessageInput: empty message discarded");
                return;
            }
            decode(new RawMessage(bytes, sender));
        } else if (!result.isValid()) {
            synchronized (this) {
                invalidChunks++;
            }
            error("GelfChunkAggregator: message chunk was not valid and discarded (" + data.length + " bytes)");
        }
    }

    private void decode(RawMessage raw) {
        final Message message;
        try {
            message = codec.decode(raw);
        } catch (RuntimeException e) {
            error("GelfCodec: " + e + (e.getCause() != null ? " (cause: " + e.getCause() + ")" : ""));
            return;
        }
        if (message == null) {
            error("GelfCodec: no message (DecodingProcessor counts a failure)");
            return;
        }
        // DecodingProcessor.postProcessMessage
        if (!message.isComplete()) {
            error("DecodingProcessor: incomplete message dropped (empty message field): " + message.getFields());
            return;
        }
        final ResolvableInetSocketAddress remote = raw.getRemoteAddress();
        if (remote != null) {
            final String ip = InetAddresses.toAddrString(remote.getAddress());
            message.addField(Message.FIELD_GL2_REMOTE_IP, ip);
            if (remote.getPort() > 0) {
                message.addField(Message.FIELD_GL2_REMOTE_PORT, remote.getPort());
            }
            if (message.getSource() == null || message.getSource().isEmpty()) {
                message.setSource(ip);
            }
        }
        if (message.getSource() == null || message.getSource().isEmpty()) {
            message.setSource("unknown");
        }
        if (message.getReceiveTime() == null) {
            message.setReceiveTime(raw.getTimestamp());
        }
        final Map<String, Object> stored;
        try {
            stored = message.toElasticSearchObject(json, invalidTimestamps);
        } catch (RuntimeException e) {
            error("Message.toElasticSearchObject: " + e);
            return;
        }
        write(Map.of("stored", stored));
    }

    private void error(String text) {
        write(Map.of("error", text));
    }

    // -- transports ----------------------------------------------------------------------------------------
    private Thread udp(int port) throws IOException {
        final DatagramSocket socket = new DatagramSocket(new InetSocketAddress(InetAddress.getLoopbackAddress(), port));
        socket.setReceiveBufferSize(16 << 20);
        ready("udp://127.0.0.1:" + socket.getLocalPort());
        return new Thread(() -> {
            final byte[] buf = new byte[65535]; // UdpTransport: FixedRecvByteBufAllocator(65535)
            final DatagramPacket p = new DatagramPacket(buf, buf.length);
            while (true) {
                try {
                    p.setLength(buf.length);
                    socket.receive(p);
                } catch (IOException e) {
                    System.err.println("gelf-decode: " + e);
                    return;
                }
                final byte[] data = new byte[p.getLength()];
                System.arraycopy(buf, p.getOffset(), data, 0, p.getLength());
                chunk(data, (InetSocketAddress) p.getSocketAddress());
            }
        }, "udp");
    }

    private Thread tcp(int port, int maxFrame) throws IOException {
        final ServerSocket server = new ServerSocket(port, 50, InetAddress.getLoopbackAddress());
        ready("tcp://127.0.0.1:" + server.getLocalPort());
        return new Thread(() -> {
            while (true) {
                final Socket conn;
                try {
                    conn = server.accept();
                } catch (IOException e) {
                    System.err.println("gelf-decode: " + e);
                    return;
                }
                final Thread t = new Thread(() -> connection(conn, maxFrame), "tcp-" + conn.getPort());
                t.setDaemon(true);
                t.start();
            }
        }, "tcp-accept");
    }

    private void connection(Socket conn, int maxFrame) {
        final InetSocketAddress sender = (InetSocketAddress) conn.getRemoteSocketAddress();
        // TcpTransport: "framer" = LenientDelimiterBasedFrameDecoder(maxFrameLength, nulDelimiter())
        final EmbeddedChannel framer = new EmbeddedChannel(
                new LenientDelimiterBasedFrameDecoder(maxFrame, Delimiters.nulDelimiter()));
        final byte[] buf = new byte[8192]; // AbstractTcpTransport: FixedRecvByteBufAllocator(8192)
        try (conn; InputStream in = conn.getInputStream()) {
            int n;
            while ((n = in.read(buf)) > 0) {
                try {
                    framer.writeInbound(Unpooled.copiedBuffer(buf, 0, n));
                } catch (RuntimeException e) { // TooLongFrameException: Graylog logs it and reads on
                    error("LenientDelimiterBasedFrameDecoder: " + e);
                }
                drain(framer, sender);
            }
            framer.finish(); // a last frame without its null byte is still emitted (Lenient...)
            drain(framer, sender);
        } catch (IOException e) {
            System.err.println("gelf-decode: connection from " + sender + ": " + e);
        }
    }

    private void drain(EmbeddedChannel framer, InetSocketAddress sender) {
        ByteBuf frame;
        while ((frame = framer.readInbound()) != null) {
            final byte[] data = new byte[frame.readableBytes()];
            frame.readBytes(data);
            frame.release();
            chunk(data, sender);
        }
    }
}
