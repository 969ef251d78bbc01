package collector.searchengine;

import org.elasticsearch.Build;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.ClusterState;
import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.xcontent.XContentBuilder;

import java.util.List;
import java.util.function.Supplier;

import static org.elasticsearch.rest.RestRequest.Method.GET;
import static org.elasticsearch.rest.RestRequest.Method.HEAD;

/**
 * {@code GET /} and {@code HEAD /}: in a real distribution they come from the rest-root module,
 * which is not published to Maven Central. Same body as the real MainResponse; for HEAD the HTTP
 * layer drops the body. (The {@code X-Elastic-Product: Elasticsearch} header is added by the
 * server's RestController to every response, so nothing to do for it here.)
 */
final class RootRestHandler extends BaseRestHandler {
    private final Supplier<ClusterService> clusterService;

    RootRestHandler(Supplier<ClusterService> clusterService) {
        this.clusterService = clusterService;
    }

    @Override
    public String getName() {
        return "collector_root_action";
    }

    @Override
    public List<Route> routes() {
        return List.of(new Route(GET, "/"), new Route(HEAD, "/"));
    }

    @Override
    public boolean canTripCircuitBreaker() {
        return false;
    }

    @Override
    protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
        ClusterService service = clusterService.get();
        ClusterState state = service.state();
        Build build = Build.current();
        return channel -> {
            XContentBuilder b = channel.newBuilder();
            if (request.hasParam("pretty") == false) b.prettyPrint().lfAtEnd(); // like the real one
            b.startObject();
            b.field("name", service.localNode().getName());
            b.field("cluster_name", state.getClusterName().value());
            b.field("cluster_uuid", state.metadata().clusterUUID());
            b.startObject("version")
                .field("number", build.qualifiedVersion())
                .field("build_flavor", build.flavor())
                // the Maven jar does not record how it was packaged; a real node says tar/docker/...
                .field("build_type", build.type() == Build.Type.UNKNOWN ? "tar" : build.type().displayName())
                .field("build_hash", build.hash())
                .field("build_date", build.date())
                .field("build_snapshot", build.isSnapshot())
                .field("lucene_version", org.apache.lucene.util.Version.LATEST.toString())
                .field("minimum_wire_compatibility_version", build.minWireCompatVersion())
                .field("minimum_index_compatibility_version", build.minIndexCompatVersion())
                .endObject();
            b.field("tagline", "You Know, for Search");
            b.endObject();
            channel.sendResponse(new RestResponse(RestStatus.OK, b));
        };
    }
}
