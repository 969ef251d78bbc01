// composecheck loads Compose files the way `docker compose config` does, with the Compose
// Specification's reference implementation (github.com/compose-spec/compose-go, which Docker
// Compose v2 is built on): JSON-schema validation, interpolation, merging, normalization and the
// consistency checks (undefined volumes, networks, secrets, depends_on targets, ...), with every
// profile enabled.
//
//	go run . deploy/elk/compose.yaml ...
//
// Prints one JSON object, file -> the resolved project (as `docker compose config --format json`),
// and exits 1 with the loader's errors when any file is invalid.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func load(ctx context.Context, file string) (json.RawMessage, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	opts, err := cli.NewProjectOptions(
		[]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithOsEnv,
		cli.WithDotEnv,
		cli.WithProfiles([]string{"*"}),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return nil, err
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, err
	}
	return project.MarshalJSON()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck COMPOSE_FILE...")
		os.Exit(2)
	}
	ctx := context.Background()
	out := map[string]json.RawMessage{}
	failed := false
	for _, f := range os.Args[1:] {
		p, err := load(ctx, f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", f, err)
			failed = true
			continue
		}
		out[f] = p
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if failed {
		os.Exit(1)
	}
}
