package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// manOptions writes the OPTIONS of the man page, in go-md2man's markdown,
// from the command tree: the flags are documented once, here in the code
// (`make man` puts them into docs/man/ds01-workloads.1.md).
func manOptions(out io.Writer, root *cobra.Command) {
	cmds := []*cobra.Command{root}
	for _, c := range root.Commands() {
		if c.IsAvailableCommand() && c.HasAvailableLocalFlags() && c.Name() != "completion" && c.Name() != "help" {
			cmds = append(cmds, c)
		}
	}
	for _, c := range cmds {
		if c != root {
			fmt.Fprintf(out, "## %s\n", c.CommandPath())
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Hidden || f.Name == "help" || f.Name == "version" {
				return
			}
			name := "**--" + f.Name + "**"
			if f.Shorthand != "" {
				name = "**-" + f.Shorthand + "**, " + name
			}
			varname, usage := pflag.UnquoteUsage(f)
			switch {
			case f.NoOptDefVal != "" && varname == "" && f.Value.Type() != "bool":
				name += "[=*" + f.NoOptDefVal + "*]"
			case varname != "":
				name += " *" + varname + "*"
			}
			if d := f.DefValue; d != "" && d != "false" && d != "0" && f.Value.Type() != "bool" {
				usage += " (default " + d + ")"
			}
			fmt.Fprintf(out, "%s\n: %s\n\n", name, mdEscape(usage))
		})
	}
}

// mdEscape keeps go-md2man from reading * _ < > ` as markup.
func mdEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "*", `\*`, "_", `\_`, "<", `\<`, ">", `\>`, "`", "\\`").Replace(s)
}
