package collector.searchengine;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.ClasspathNode;
import org.elasticsearch.node.Node;
import org.elasticsearch.transport.netty4.Netty4Plugin;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Starts a single Elasticsearch node inside this JVM, with the plugins it needs taken from the
 * classpath (the real distribution loads them from modules/ with one class loader each).
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

        // log4j2 itself is configured by log4j2.properties on the classpath; this only wires
        // Elasticsearch's own logging facade to it (what the real bootstrap's LogConfigurator does).
        LogConfigurator.configureESLogging();
        LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(settings));

        long startNanos = System.nanoTime();
        Node node = new ClasspathNode(new Environment(settings, config), List.of(Netty4Plugin.class, RootPlugin.class));
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
