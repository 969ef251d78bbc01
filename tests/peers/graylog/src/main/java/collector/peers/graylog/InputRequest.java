package collector.peers.graylog;

import com.fasterxml.jackson.databind.ObjectMapper;
import org.graylog2.inputs.codecs.GelfCodec;
import org.graylog2.inputs.gelf.tcp.GELFTCPInput;
import org.graylog2.inputs.gelf.udp.GELFUDPInput;
import org.graylog2.inputs.transports.TcpTransport;
import org.graylog2.inputs.transports.UdpTransport;
import org.graylog2.plugin.configuration.Configuration;
import org.graylog2.plugin.configuration.ConfigurationException;
import org.graylog2.plugin.configuration.ConfigurationRequest;
import org.graylog2.plugin.configuration.fields.BooleanField;
import org.graylog2.plugin.configuration.fields.ConfigurationField;
import org.graylog2.plugin.configuration.fields.DropdownField;
import org.graylog2.plugin.configuration.fields.ListField;
import org.graylog2.plugin.configuration.fields.NumberField;
import org.graylog2.plugin.configuration.fields.TextField;
import org.graylog2.plugin.inputs.MessageInput;
import org.graylog2.rest.models.system.inputs.requests.InputCreateRequest;
import org.graylog2.rest.models.system.inputs.responses.InputCreated;
import org.graylog2.rest.models.system.inputs.responses.InputSummary;
import org.graylog2.shared.bindings.providers.ObjectMapperProvider;
import org.joda.time.DateTime;
import org.joda.time.DateTimeZone;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Reads a POST /api/system/inputs body the way Graylog 6.1's InputsResource.create does.
 *
 * <pre>
 *   InputRequest input-create BODY.json [--id ID]
 * </pre>
 *
 * The body is bound to Graylog's {@link InputCreateRequest} by Graylog's own ObjectMapper
 * ({@link ObjectMapperProvider}: snake_case, its modules and deserializer modifiers), the input's
 * configuration is checked against the input type's {@link ConfigurationRequest} (transport and
 * codec fields, as MessageInput.checkConfiguration does), and the answers Graylog would give are
 * serialised by Graylog's response classes. Prints one JSON object:
 * <ul>
 *   <li>accepted: {"status": 201, "request": the bound request re-serialised, "created": InputCreated,
 *       "summary": the InputSummary a GET /api/system/inputs then lists, "fields": the type's
 *       configuration fields, "unknown_keys": configuration keys Graylog has no field for (it stores
 *       them anyway), "wrong_type": provided keys whose value Graylog would not read as the field's type};</li>
 *   <li>refused: {"status": 400 or 404, "message": Graylog's answer, "cause": the exception}.</li>
 * </ul>
 */
public final class InputRequest {
    private static final Map<String, MessageInput.Config> INPUTS = Map.of(
            GELFUDPInput.class.getCanonicalName(), new GELFUDPInput.Config(udpTransport(), gelfCodec()),
            GELFTCPInput.class.getCanonicalName(), new GELFTCPInput.Config(tcpTransport(), gelfCodec()));

    public static void main(String[] args) throws Exception {
        if (args.length < 2 || !"input-create".equals(args[0])) {
            System.err.println("usage: input-request input-create BODY.json [--id ID]");
            System.exit(2);
        }
        final String body = Files.readString(Path.of(args[1]), StandardCharsets.UTF_8);
        final String id = args.length >= 4 && "--id".equals(args[2]) ? args[3] : "0123456789abcdef01234567";
        final ObjectMapper mapper = new ObjectMapperProvider().get();
        final Map<String, Object> out = new LinkedHashMap<>();
        final InputCreateRequest request;
        try {
            request = mapper.readValue(body, InputCreateRequest.class);
        } catch (Exception e) { // Jersey answers 400 when the entity cannot be read
            out.put("status", 400);
            out.put("message", "Unable to map the request body to InputCreateRequest");
            out.put("cause", e.toString());
            print(mapper, out);
            return;
        }
        final MessageInput.Config input = INPUTS.get(request.type());
        if (input == null) { // MessageInputFactory: NoSuchInputTypeException -> 404
            out.put("status", 404);
            out.put("message", "There is no such input type registered.");
            out.put("cause", "There is no input of type <" + request.type() + "> registered. (this peer knows "
                    + INPUTS.keySet() + ")");
            print(mapper, out);
            return;
        }
        final ConfigurationRequest cr = input.combinedRequestedConfiguration();
        final Configuration configuration = new Configuration(request.configuration());
        try {
            cr.check(configuration); // MessageInput.checkConfiguration
        } catch (ConfigurationException e) {
            out.put("status", 400);
            out.put("message", "Missing or invalid input configuration.");
            out.put("cause", e.getMessage());
            print(mapper, out);
            return;
        }
        final Map<String, Object> fields = new TreeMap<>();
        final List<String> wrongType = new ArrayList<>();
        for (ConfigurationField f : cr.getFields().values()) {
            final Map<String, Object> d = new LinkedHashMap<>();
            d.put("type", f.getFieldType());
            d.put("optional", f.isOptional() == ConfigurationField.Optional.OPTIONAL);
            d.put("default", f.getDefaultValue());
            fields.put(f.getName(), d);
            if (request.configuration() != null && request.configuration().containsKey(f.getName())
                    && !readsAs(configuration, f)) {
                wrongType.add(f.getName() + " (" + f.getFieldType() + "): " + request.configuration().get(f.getName()));
            }
        }
        final List<String> unknown = new ArrayList<>();
        if (request.configuration() != null) {
            for (String k : request.configuration().keySet()) {
                if (!cr.containsField(k)) {
                    unknown.add(k);
                }
            }
        }
        out.put("status", 201);
        out.put("request", mapper.valueToTree(request));
        out.put("created", mapper.valueToTree(InputCreated.create(id)));
        out.put("summary", mapper.valueToTree(InputSummary.create(request.title(), request.global(),
                input == INPUTS.get(GELFUDPInput.class.getCanonicalName()) ? "GELF UDP" : "GELF TCP", null, id,
                new DateTime(DateTimeZone.UTC), request.type(), "admin", request.configuration(), Map.of(),
                request.global() ? null : request.node())));
        out.put("fields", fields);
        out.put("unknown_keys", unknown);
        out.put("wrong_type", wrongType);
        print(mapper, out);
    }

    /** Whether Graylog's Configuration reads the provided value as the field's type. */
    private static boolean readsAs(Configuration c, ConfigurationField f) {
        return switch (f.getFieldType()) {
            case NumberField.FIELD_TYPE -> c.intIsSet(f.getName());
            case BooleanField.FIELD_TYPE -> c.booleanIsSet(f.getName());
            case ListField.FIELD_TYPE -> c.listIsSet(f.getName());
            case TextField.FIELD_TYPE, DropdownField.FIELD_TYPE -> c.stringIsSet(f.getName());
            default -> true;
        };
    }

    private static void print(ObjectMapper mapper, Map<String, Object> out) throws Exception {
        System.out.println(mapper.writeValueAsString(out));
        System.out.flush();
    }

    private static UdpTransport.Factory udpTransport() {
        return new UdpTransport.Factory() {
            @Override
            public UdpTransport create(Configuration configuration) {
                throw new UnsupportedOperationException("no transport is started here");
            }

            @Override
            public UdpTransport.Config getConfig() {
                return new UdpTransport.Config();
            }
        };
    }

    private static TcpTransport.Factory tcpTransport() {
        return new TcpTransport.Factory() {
            @Override
            public TcpTransport create(Configuration configuration) {
                throw new UnsupportedOperationException("no transport is started here");
            }

            @Override
            public TcpTransport.Config getConfig() {
                return new TcpTransport.Config();
            }
        };
    }

    private static GelfCodec.Factory gelfCodec() {
        return new GelfCodec.Factory() {
            @Override
            public GelfCodec create(Configuration configuration) {
                throw new UnsupportedOperationException("no codec is made here");
            }

            @Override
            public GelfCodec.Config getConfig() {
                return new GelfCodec.Config();
            }

            @Override
            public GelfCodec.Descriptor getDescriptor() {
                return new GelfCodec.Descriptor();
            }
        };
    }
}
