package org.opensearch.node;

import org.opensearch.env.Environment;
import org.opensearch.plugins.Plugin;

import java.util.Collection;

/** OpenSearch's Node already accepts classpath plugins through a protected constructor (as its MockNode does). */
public class ClasspathNode extends Node {
    public ClasspathNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
        super(environment, plugins, true);
    }
}
