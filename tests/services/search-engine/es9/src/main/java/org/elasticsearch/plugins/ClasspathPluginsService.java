package org.elasticsearch.plugins;

import org.elasticsearch.Build;
import org.elasticsearch.common.settings.Settings;

import java.util.Collection;
import java.util.List;

/** PluginsService over plugin classes already on the classpath (LoadedPlugin is package-private). */
public class ClasspathPluginsService extends PluginsService {
    private final List<LoadedPlugin> plugins;

    public ClasspathPluginsService(Settings settings, PluginsLoader loader, Collection<Class<? extends Plugin>> classes) {
        super(settings, null, loader);
        plugins = classes.stream().map(c -> new LoadedPlugin(descriptor(c), loadPlugin(c, settings, null), c.getClassLoader())).toList();
        loadExtensions(plugins);
    }

    private static PluginDescriptor descriptor(Class<? extends Plugin> c) {
        return new PluginDescriptor(c.getName(), "classpath plugin", "NA", Build.current().version(), "21", c.getName(),
            null, List.of(), false, false, false, false, PluginDescriptor.DeploymentTarget.ALL);
    }

    @Override
    protected List<LoadedPlugin> plugins() {
        return plugins;
    }
}
