// Package cli implements agentctl's command tree: assistants, runs, threads and workers,
// spoken to a gateway over its public gRPC API (agentserver.v1).
//
// It owns flag parsing, output formatting (text tables or protojson), error reporting and exit
// codes. It must never reach past the public API: no database, scheduler or worker access, and
// no state of its own between invocations.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// Exit codes of agentctl.
const (
	// ExitOK means the command did what it was asked; for a waited run, it SUCCEEDED.
	ExitOK = 0
	// ExitFailure means the call failed, or a waited run ended in FAILED, CANCELLED or
	// TIMED_OUT, or the wait ran out of time.
	ExitFailure = 1
	// ExitUsage means the command line was wrong; nothing was sent.
	ExitUsage = 2
	// ExitInterrupted means a waited run is INTERRUPTED: it waits for input.
	ExitInterrupted = 3
	// ExitSignal means agentctl itself was interrupted (Ctrl-C, SIGTERM).
	ExitSignal = 130
)

// Environment variables that supply defaults for global flags.
const (
	// EnvAddr names the gateway's gRPC address when --addr is not given.
	EnvAddr = "AGENTSERVER_ADDR"
	// EnvAPIKey holds the API key when --api-key is not given.
	EnvAPIKey = "AGENTSERVER_API_KEY"
)

// Output formats of -o/--output.
const (
	// OutputText prints tables and key fields for people.
	OutputText = "text"
	// OutputJSON prints the response as one protojson object.
	OutputJSON = "json"
)

// Config holds the global settings of one invocation, resolved from flags, then environment
// variables, then defaults.
type Config struct {
	// Addr is the gateway's gRPC address (host:port).
	Addr string
	// Timeout bounds each call to the gateway.
	Timeout time.Duration
	// Output is OutputText or OutputJSON.
	Output string
	// APIKey, when set, is sent as "authorization: Bearer <key>" metadata.
	APIKey string
}

// DefaultConfig returns the settings used when neither flags nor environment say otherwise.
func DefaultConfig() Config {
	return Config{Addr: "localhost:9090", Timeout: 30 * time.Second, Output: OutputText}
}

// validate checks the settings that flags cannot check by their type.
func (c Config) validate() error {
	switch {
	case c.Addr == "":
		return usageErrorf("--addr must not be empty")
	case c.Timeout <= 0:
		return usageErrorf("--timeout must be positive, got %s", c.Timeout)
	case c.Output != OutputText && c.Output != OutputJSON:
		return usageErrorf("-o/--output must be %q or %q, got %q", OutputText, OutputJSON, c.Output)
	}
	return nil
}

// Env is what agentctl sees of the process it runs in. Zero fields take the process's own.
type Env struct {
	// Stdin is read by --flow - and --input-file -.
	Stdin io.Reader
	// Stdout receives results.
	Stdout io.Writer
	// Stderr receives errors, hints and the progress spinner.
	Stderr io.Writer
	// Getenv looks up environment variables.
	Getenv func(string) string
	// Now tells the time, for ages such as "3s ago".
	Now func() time.Time
	// IsTerminal reports whether w is a terminal; the spinner shows only on one.
	IsTerminal func(w io.Writer) bool
}

// Main runs agentctl with args (without the program name) and returns its exit code.
func Main(ctx context.Context, args []string, env Env) int {
	return newApp(env).run(ctx, args)
}

// app is one invocation of agentctl: its settings, streams and, once a command needs it, its
// connection to the gateway.
type app struct {
	env Env
	cfg Config

	// waitChunk is the server-side timeout of each WaitRun call.
	waitChunk time.Duration
	// waitPace is the least time between two WaitRun calls that return early with an
	// unchanged state, so that a server which does not block cannot make us spin.
	waitPace time.Duration
	// watch is how `runs watch` reconnects a broken event stream; zero fields mean defaults.
	watch watchPolicy

	// noRetry turns gRPC's retry support off on the connection: set by bench, whose
	// calls are never retried and which runs beside the server it measures (that support
	// costs the client CPU on every call).
	noRetry bool

	conn *grpc.ClientConn
}

func newApp(env Env) *app {
	if env.Stdin == nil {
		env.Stdin = os.Stdin
	}
	if env.Stdout == nil {
		env.Stdout = os.Stdout
	}
	if env.Stderr == nil {
		env.Stderr = os.Stderr
	}
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.IsTerminal == nil {
		env.IsTerminal = isTerminal
	}
	return &app{
		env:       env,
		cfg:       DefaultConfig(),
		waitChunk: 30 * time.Second,
		waitPace:  time.Second,
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// run executes one command line and turns its outcome into an exit code, reporting any error
// on stderr.
func (a *app) run(ctx context.Context, args []string) int {
	defer a.close()
	root := a.newRootCommand()
	root.SetArgs(args)
	root.SetIn(a.env.Stdin)
	root.SetOut(a.env.Stdout)
	root.SetErr(a.env.Stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	if cmd == nil {
		cmd = root
	}
	return a.report(ctx, cmd, err)
}

func (a *app) newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "agentctl",
		Short: "Command-line client of agentserver",
		Long: `agentctl manages assistants and threads, creates, waits for, watches and resumes runs
and shows the workers of an agentserver cluster, talking gRPC to a gateway.

Exit codes: 0 success (a waited run SUCCEEDED), 1 failure (a call failed, or a waited run
FAILED, was CANCELLED or TIMED_OUT), 2 usage error, 3 a waited run is INTERRUPTED.`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		Args:              cobra.ArbitraryArgs,
		RunE:              groupRunE,
		PersistentPreRunE: a.resolveConfig,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	def := DefaultConfig()
	pf := root.PersistentFlags()
	pf.StringVar(&a.cfg.Addr, "addr", def.Addr, "gateway gRPC address (env "+EnvAddr+")")
	pf.DurationVar(&a.cfg.Timeout, "timeout", def.Timeout,
		"deadline of each call to the gateway (where a command has its own --timeout, that one applies)")
	pf.StringVarP(&a.cfg.Output, "output", "o", def.Output, "output format: text or json")
	pf.StringVar(&a.cfg.APIKey, "api-key", "", "API key, sent as a bearer token (env "+EnvAPIKey+")")

	root.AddCommand(a.newAssistantsCommand(), a.newRunsCommand(), a.newThreadsCommand(), a.newWorkersCommand(), a.newBenchCommand())
	return root
}

// resolveConfig fills the global settings from the environment where no flag was given, and
// validates them, before any command runs.
func (a *app) resolveConfig(cmd *cobra.Command, _ []string) error {
	pf := cmd.Root().PersistentFlags()
	fromEnv := func(flag, env string, dst *string) {
		if !pf.Lookup(flag).Changed {
			if v := a.env.Getenv(env); v != "" {
				*dst = v
			}
		}
	}
	fromEnv("addr", EnvAddr, &a.cfg.Addr)
	fromEnv("api-key", EnvAPIKey, &a.cfg.APIKey)
	return a.cfg.validate()
}

// groupRunE makes a command group print its help when called alone and refuse an unknown
// subcommand as a usage error (cobra would print help and succeed).
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default, applied only on its legacy path
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usageErrorf("%s", msg)
}

// newGroup returns a command that only holds subcommands.
func newGroup(use, short string, aliases ...string) *cobra.Command {
	return &cobra.Command{
		Use:     use,
		Short:   short,
		Aliases: aliases,
		Args:    cobra.ArbitraryArgs,
		RunE:    groupRunE,
	}
}

// exactArgs is cobra.ExactArgs with a usage error that names what is missing.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == len(names) {
			return nil
		}
		if len(args) < len(names) {
			return usageErrorf("missing %s", names[len(args)])
		}
		return usageErrorf("%q takes %d argument(s), got %d", cmd.CommandPath(), len(names), len(args))
	}
}

// noArgs refuses positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%q takes no arguments, got %q", cmd.CommandPath(), args[0])
	}
	return nil
}

// changed reports whether the flag name was given on the command line of cmd.
func changed(cmd *cobra.Command, name string) bool {
	return cmd.Flags().Changed(name)
}

// pageFlags are the paging flags of list commands.
type pageFlags struct {
	size  int32
	token string
	all   bool
}

func (p *pageFlags) register(fs *pflag.FlagSet) {
	fs.Int32Var(&p.size, "page-size", 0, "results per page (0 = the server's default)")
	fs.StringVar(&p.token, "page-token", "", "page to start at (the next_page_token of a previous list)")
	fs.BoolVar(&p.all, "all", false, "follow next_page_token and list every page")
}

func (p *pageFlags) validate() error {
	if p.size < 0 {
		return usageErrorf("--page-size must not be negative, got %d", p.size)
	}
	return nil
}

// listPages calls fetch for the first page and, with --all, for every next page; it returns
// the items and the token of the page after the last one fetched.
func listPages[T any](ctx context.Context, p pageFlags, fetch func(ctx context.Context, size int32, token string) ([]T, string, error)) ([]T, string, error) {
	if err := p.validate(); err != nil {
		return nil, "", err
	}
	var items []T
	token := p.token
	seen := map[string]bool{}
	for {
		page, next, err := fetch(ctx, p.size, token)
		if err != nil {
			return nil, "", err
		}
		items = append(items, page...)
		if !p.all || next == "" {
			return items, next, nil
		}
		if seen[next] {
			return nil, "", fmt.Errorf("the server returned page token %q twice; stopping to avoid a loop", next)
		}
		seen[next] = true
		token = next
	}
}

// listing is one list command: how to fetch a page of its items and how to print them.
type listing[T any] struct {
	// page fetches one page; printList bounds its context by --timeout.
	page func(ctx context.Context, size int32, token string) ([]T, string, error)
	// response is the -o json output: the List…Response holding every item fetched.
	response func(items []T, next string) proto.Message
	// noun names the items in the text output's "No runs." line.
	noun string
	// header, the tab-separated column names, makes the text output a table of rows;
	// without one each row is a line as it is.
	header string
	row    func(now time.Time, item T) string
}

// printList fetches l's pages (every one with --all) and prints them as one JSON response,
// a table or lines, then tells a person reading text how to see the rest.
func printList[T any](ctx context.Context, a *app, p pageFlags, l listing[T]) error {
	items, next, err := listPages(ctx, p, func(ctx context.Context, size int32, token string) ([]T, string, error) {
		ctx, cancel := a.callContext(ctx)
		defer cancel()
		return l.page(ctx, size, token)
	})
	if err != nil {
		return err
	}
	if a.jsonOutput() {
		return a.printJSON(l.response(items, next))
	}
	if len(items) == 0 {
		fmt.Fprintf(a.env.Stderr, "No %s.\n", l.noun)
		return nil
	}
	now := a.env.Now()
	w := a.env.Stdout
	var tw *tabwriter.Writer
	if l.header != "" {
		tw = newTable(w)
		w = tw
		fmt.Fprintln(tw, l.header)
	}
	for _, item := range items {
		if _, err := fmt.Fprintln(w, l.row(now, item)); err != nil {
			return err
		}
	}
	if tw != nil {
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	a.morePages(next)
	return nil
}

// callNamed is a command about one resource: it reads the resource's name from arg (an id
// or collection/id), makes one call of the gateway with it (bounded by --timeout) and prints
// the answer, as protojson with -o json and by text otherwise.
func callNamed[C any, R proto.Message](ctx context.Context, a *app, open func() (C, error), collection, what, arg string,
	call func(ctx context.Context, c C, name string) (R, error), text func(name string, answer R) error) error {
	name, err := resourceName(collection, what, arg)
	if err != nil {
		return err
	}
	c, err := open()
	if err != nil {
		return err
	}
	ctx, cancel := a.callContext(ctx)
	defer cancel()
	answer, err := call(ctx, c, name)
	if err != nil {
		return err
	}
	if a.jsonOutput() {
		return a.printJSON(answer)
	}
	return text(name, answer)
}

// morePages tells a person reading a table how to see the rest.
func (a *app) morePages(next string) {
	if next != "" && a.cfg.Output == OutputText {
		fmt.Fprintf(a.env.Stderr, "more results: rerun with --all, or with --page-token %s\n", next)
	}
}

// callContext bounds one call to the gateway by --timeout.
func (a *app) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.cfg.Timeout)
}

// client returns a client of one of the gateway's services (agentserverv1.New…Client) on
// the one connection agentctl dials.
func client[C any](a *app, newClient func(grpc.ClientConnInterface) C) (C, error) {
	conn, err := a.dial()
	if err != nil {
		var none C
		return none, err
	}
	return newClient(conn), nil
}

func (a *app) assistantClient() (agentserverv1.AssistantServiceClient, error) {
	return client(a, agentserverv1.NewAssistantServiceClient)
}

func (a *app) runClient() (agentserverv1.RunServiceClient, error) {
	return client(a, agentserverv1.NewRunServiceClient)
}

func (a *app) clusterClient() (agentserverv1.ClusterServiceClient, error) {
	return client(a, agentserverv1.NewClusterServiceClient)
}

func (a *app) threadClient() (agentserverv1.ThreadServiceClient, error) {
	return client(a, agentserverv1.NewThreadServiceClient)
}

func (a *app) close() {
	if a.conn != nil {
		_ = a.conn.Close()
		a.conn = nil
	}
}

// isCancelled reports whether err comes from ctx having been cancelled (Ctrl-C).
func isCancelled(ctx context.Context, err error) bool {
	return ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, ctx.Err()) || statusCodeIsCanceled(err))
}
