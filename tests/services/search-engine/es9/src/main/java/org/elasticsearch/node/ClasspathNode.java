package org.elasticsearch.node;

import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.ClasspathPluginsService;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.PluginsLoader;
import org.elasticsearch.plugins.PluginsService;

import java.util.Collection;
import java.util.Map;
import java.util.Set;

/**
 * A Node whose plugins are classes on the classpath (what the test framework's MockNode does).
 * Lives in org.elasticsearch.node because NodeConstruction/NodeServiceProvider are package-private.
 */
public class ClasspathNode extends Node {
    public ClasspathNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
        super(NodeConstruction.prepareConstruction(
            environment,
            PluginsLoader.createPluginsLoader(Set.of(), Set.of(), Map.of(), false),
            new NodeServiceProvider() {
                @Override
                PluginsService newPluginService(Environment env, PluginsLoader loader) {
                    return new ClasspathPluginsService(env.settings(), loader, plugins);
                }
            },
            true));
    }
}
