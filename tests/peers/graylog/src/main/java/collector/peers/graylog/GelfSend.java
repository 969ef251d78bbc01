package collector.peers.graylog;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.graylog2.gelfclient.Compression;
import org.graylog2.gelfclient.GelfConfiguration;
import org.graylog2.gelfclient.GelfMessage;
import org.graylog2.gelfclient.GelfMessageLevel;
import org.graylog2.gelfclient.GelfTransports;
import org.graylog2.gelfclient.transport.GelfTransport;

import java.io.BufferedReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Iterator;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Sends GELF with Graylog's own client library, org.graylog2:gelfclient (what Graylog's GELF output uses).
 *
 * <pre>
 *   GelfSend --udp HOST:PORT | --tcp HOST:PORT --messages FILE.ndjson [--compression gzip|zlib|none] [--gap-ms N]
 * </pre>
 *
 * Each line of FILE is one message: {"short_message", "host", "full_message", "timestamp" (seconds),
 * "level" (0-7), "fields": {name: value}}; the client adds the "_" of additional fields itself.
 * UDP messages over 1,420 bytes (after compression) are chunked by the client (at most 128 chunks).
 * The client names a chunked message by the current millisecond and a per-connection random part,
 * so two chunked messages encoded in the same millisecond share an id: {@code --gap-ms} waits after
 * each message that may be chunked. Prints {"sent": N} once the client's queue is flushed and stopped.
 */
public final class GelfSend {
    public static void main(String[] args) throws Exception {
        GelfTransports transport = null;
        String address = null;
        Path messages = null;
        Compression compression = Compression.GZIP;
        int gapMs = 0;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--udp" -> {
                    transport = GelfTransports.UDP;
                    address = args[++i];
                }
                case "--tcp" -> {
                    transport = GelfTransports.TCP;
                    address = args[++i];
                }
                case "--messages" -> messages = Path.of(args[++i]);
                case "--compression" -> compression = Compression.valueOf(args[++i].toUpperCase());
                case "--gap-ms" -> gapMs = Integer.parseInt(args[++i]);
                default -> {
                    System.err.println("gelf-send: unknown argument " + args[i]);
                    System.exit(2);
                }
            }
        }
        if (transport == null || messages == null) {
            System.err.println("usage: gelf-send --udp HOST:PORT | --tcp HOST:PORT --messages FILE.ndjson [--compression C] [--gap-ms N]");
            System.exit(2);
        }
        final int colon = address.lastIndexOf(':');
        final GelfConfiguration config = new GelfConfiguration(address.substring(0, colon), Integer.parseInt(address.substring(colon + 1)))
                .transport(transport)
                .compression(compression)
                .queueSize(1024)
                .tcpNoDelay(true)
                .reconnectDelay(200);
        final GelfTransport client = GelfTransports.create(config);
        final ObjectMapper json = new ObjectMapper();
        int sent = 0;
        try (BufferedReader in = Files.newBufferedReader(messages, StandardCharsets.UTF_8)) {
            String line;
            while ((line = in.readLine()) != null) {
                if (line.isBlank()) {
                    continue;
                }
                final JsonNode m = json.readTree(line);
                final GelfMessage msg = new GelfMessage(m.path("short_message").asText(), m.path("host").asText("gelfclient"));
                if (m.has("full_message")) {
                    msg.setFullMessage(m.get("full_message").asText());
                }
                if (m.has("timestamp")) {
                    msg.setTimestamp(m.get("timestamp").asDouble());
                }
                if (m.has("level")) {
                    msg.setLevel(GelfMessageLevel.fromNumericLevel(m.get("level").asInt()));
                }
                final Iterator<Map.Entry<String, JsonNode>> fields = m.path("fields").fields();
                while (fields.hasNext()) {
                    final Map.Entry<String, JsonNode> f = fields.next();
                    final JsonNode v = f.getValue();
                    msg.addAdditionalField(f.getKey(), v.isIntegralNumber() ? (Object) v.asLong()
                            : v.isNumber() ? (Object) v.asDouble() : v.asText());
                }
                client.send(msg);
                sent++;
                if (gapMs > 0 && line.length() > 1420) {
                    Thread.sleep(gapMs);
                }
            }
        }
        client.flushAndStopSynchronously(100, TimeUnit.MILLISECONDS, 600);
        System.out.println("{\"sent\": " + sent + "}");
        System.out.flush();
        System.exit(0);
    }
}
