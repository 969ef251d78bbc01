package collector.searchengine;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasPlugin;
import org.opensearch.ingest.common.IngestCommonPlugin;
import org.opensearch.node.ClasspathNode;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.transport.Netty4Plugin;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Starts a single OpenSearch node inside this JVM, with the modules it needs taken from the
 * classpath (the real distribution loads them from modules/ with one class loader each).
 * GET / is served by OpenSearch core, so no extra plugin is needed here.
 *
 * <p>Every argument is a node setting {@code key=value}; {@code path.home} is required.
 * The process runs until it gets SIGTERM/SIGINT, then closes the node cleanly (flushes shards).
 */
public final class Launcher {
    public static void main(String[] args) throws Exception {
        Settings.Builder builder = Settings.builder();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq <= 0) throw new IllegalArgumentException("expected key=value, got: " + arg);
            builder.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        Settings settings = builder.build();
        Path home = Path.of(Environment.PATH_HOME_SETTING.get(settings));
        Path config = Files.createDirectories(home.resolve("config"));

        // log4j2 itself is configured by log4j2.properties on the classpath.
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(settings));

        long startNanos = System.nanoTime();
        Node node = new ClasspathNode(new Environment(settings, config), List.of(
            Netty4Plugin.class, MapperExtrasPlugin.class, CommonAnalysisPlugin.class, IngestCommonPlugin.class, PainlessPlugin.class));
        node.start();
        System.out.printf("node started in %d ms%n", TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - startNanos));

        // Graceful stop on SIGTERM: close the node (flushes, releases the data dir lock) before exit.
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                System.out.println("stopping node");
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
                System.out.println("node stopped");
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "node-shutdown"));
        stopped.await(); // node threads are daemons: keep one non-daemon thread alive
    }
}
