# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_graceexec_global_optspecs
    string join \n l/listen= ready= name= handover= ready-timeout= drain-wait= stop-signal= stop-timeout= restart= keep-old= promote-after= ramp= control= metrics-file= fdstore pid-file= chdir= user= check= watch= log-prefix compat= backlog= unix-mode= q/quiet v/verbose h/help V/version
end

function __fish_graceexec_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_graceexec_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_graceexec_using_subcommand
    set -l cmd (__fish_graceexec_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c graceexec -n "__fish_graceexec_needs_command" -s l -l listen -d 'Socket to bind and pass on; repeatable. ADDR: PORT, :PORT, HOST:PORT, [V6]:PORT, tcp://HOST:PORT, udp://HOST:PORT, unix:/PATH, unix:@NAME. NAME= sets its LISTEN_FDNAMES name (default from the address, e.g. tcp-8080). Without --listen, sockets passed by systemd are adopted' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l ready -d 'When a new generation counts as ready: notify, accept, delay:DURATION, tcp:HOST:PORT, http://HOST:PORT/PATH or exec:COMMAND. Default: READY=1 or, with steered sockets, a connection accepted on each (else 1s alive), whichever comes first' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l name -d 'Name of this instance, for `graceexec reload --name` and friends. Default: the file name of COMMAND' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l handover -d 'How a new generation takes over TCP sockets graceexec binds: steer (each generation its own socket; new connections steered to the new one, the old one stopped once it has nothing left) or shared (one socket for all, as systemd or a peer would pass it)' -r -f -a "steer\t''
shared\t''"
complete -c graceexec -n "__fish_graceexec_needs_command" -l ready-timeout -d 'A generation not ready by then has failed' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l drain-wait -d 'With steering: how long a generation that new connections no longer go to may take to finish what it has before it is sent the stop signal anyway (idle keep-alive connections hold it that long)' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l stop-signal -d 'Signal that asks a generation to drain and exit' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l stop-timeout -d 'Time a stopping generation has before its process group gets SIGKILL' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l restart -d 'What to do when the serving generation dies on its own' -r -f -a "always\t'Start a new generation, with backoff, when the current one dies'
never\t'Exit with the child\'s status when the current generation dies'"
complete -c graceexec -n "__fish_graceexec_needs_command" -l keep-old -d 'With steering: after a promotion, keep the previous generation alive and idle this long, so `graceexec rollback` returns to it at once' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l promote-after -d 'Promote a canary (`reload --canary`) still up after this long' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l ramp -d 'With steering: each reload\'s new generation gets a share of new connections rising from 0 to 100% over this long (a warm-up)' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l control -d 'Where to put the control socket. Default: $XDG_RUNTIME_DIR/graceexec/NAME.sock, /run/graceexec/NAME.sock for root, else a private directory under /tmp' -r -F
complete -c graceexec -n "__fish_graceexec_needs_command" -l metrics-file -d 'Keep the instance\'s metrics here, in the Prometheus text format, replaced atomically at every change (node_exporter\'s textfile collector reads such files)' -r -F
complete -c graceexec -n "__fish_graceexec_needs_command" -l pid-file -d 'Write graceexec\'s pid here (atomically); removed at exit' -r -F
complete -c graceexec -n "__fish_graceexec_needs_command" -l chdir -d 'Start every generation, the check and exec probes in this directory, looked up by name at each start (default: the directory graceexec was started in, as $PWD names it, so a repointed symlink is followed)' -r -F
complete -c graceexec -n "__fish_graceexec_needs_command" -l user -d 'Bind the sockets, then run graceexec and every generation as USER (with its groups). Needs root' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l check -d 'Shell command run before each reload (a config test, say); if it fails, the reload fails with its output and nothing is started' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l watch -d 'Reload when this file changes (e.g. a new binary moved into place); repeatable. Changes are debounced' -r -F
complete -c graceexec -n "__fish_graceexec_needs_command" -l compat -d 'Also export another tool\'s variables, so servers written for it run unchanged' -r -f -a "server-starter\t'Also set SERVER_STARTER_PORT and SERVER_STARTER_GENERATION'"
complete -c graceexec -n "__fish_graceexec_needs_command" -l backlog -d 'Listen backlog of TCP and unix stream sockets' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l unix-mode -d 'Permissions of unix socket files, in octal (e.g. 660)' -r
complete -c graceexec -n "__fish_graceexec_needs_command" -l fdstore -d 'Under systemd, with FileDescriptorStoreMax= set: keep the TCP and UDP sockets graceexec binds in the service manager\'s file descriptor store, and take them back at the next start, so that `systemctl restart` refuses no connection. Implied by $FDSTORE (systemd 254 and later)'
complete -c graceexec -n "__fish_graceexec_needs_command" -l log-prefix -d 'Put "[gen K pid P] " before each line the server writes to stdout and stderr'
complete -c graceexec -n "__fish_graceexec_needs_command" -s q -l quiet -d 'Only warnings and errors'
complete -c graceexec -n "__fish_graceexec_needs_command" -s v -l verbose -d 'Also debug lines (notify messages, probe attempts, reaped orphans)'
complete -c graceexec -n "__fish_graceexec_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c graceexec -n "__fish_graceexec_needs_command" -s V -l version -d 'Print version'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "reload" -d 'Reload a running instance and wait for the outcome (exit 0: the new generation is ready; 1: the reload failed and the old one keeps serving; 3: no such instance; 4: no answer within --timeout)'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "promote" -d 'Give a canary every new connection; the previous generation drains'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "rollback" -d 'Return every new connection to the previous generation (a canary\'s, or the one --keep-old kept); the newer one drains'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "status" -d 'Show an instance: its sockets, generations and last reload'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "events" -d 'Follow an instance\'s events (reloads, generations, restarts, share changes) as they happen, until it exits'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "stop" -d 'Stop an instance gracefully; returns once it has exited'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "upgrade" -d 'Replace graceexec itself in place: the same pid, every socket and generation kept, nothing restarted'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "list" -d 'List the running instances of this user'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "completions" -d 'Print a shell completion script'
complete -c graceexec -n "__fish_graceexec_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c graceexec -n "__fish_graceexec_using_subcommand reload" -l name -d 'Name of the instance (default: the only one running)' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand reload" -l control -d 'Path of its control socket, instead of --name' -r -F
complete -c graceexec -n "__fish_graceexec_using_subcommand reload" -l timeout -d 'How long to wait for the outcome' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand reload" -l canary -d 'Steer only PCT% of new connections to the new generation until `graceexec promote` (or `rollback`); exit 0 once it serves' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand reload" -l no-wait -d 'Only ask for the reload; do not wait for its outcome'
complete -c graceexec -n "__fish_graceexec_using_subcommand reload" -s h -l help -d 'Print help'
complete -c graceexec -n "__fish_graceexec_using_subcommand promote" -l name -d 'Name of the instance (default: the only one running)' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand promote" -l control -d 'Path of its control socket, instead of --name' -r -F
complete -c graceexec -n "__fish_graceexec_using_subcommand promote" -s h -l help -d 'Print help'
complete -c graceexec -n "__fish_graceexec_using_subcommand rollback" -l name -d 'Name of the instance (default: the only one running)' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand rollback" -l control -d 'Path of its control socket, instead of --name' -r -F
complete -c graceexec -n "__fish_graceexec_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c graceexec -n "__fish_graceexec_using_subcommand status" -l name -d 'Name of the instance (default: the only one running)' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand status" -l control -d 'Path of its control socket, instead of --name' -r -F
complete -c graceexec -n "__fish_graceexec_using_subcommand status" -l json -d 'One JSON object, as the control protocol sends it'
complete -c graceexec -n "__fish_graceexec_using_subcommand status" -l prometheus -d 'The metrics, in the Prometheus text format (as --metrics-file)'
complete -c graceexec -n "__fish_graceexec_using_subcommand status" -s h -l help -d 'Print help'
complete -c graceexec -n "__fish_graceexec_using_subcommand events" -l name -d 'Name of the instance (default: the only one running)' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand events" -l control -d 'Path of its control socket, instead of --name' -r -F
complete -c graceexec -n "__fish_graceexec_using_subcommand events" -l since -d 'First replay the events kept after this sequence number (0: all kept, the last 512)' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand events" -l json -d 'One JSON object per line'
complete -c graceexec -n "__fish_graceexec_using_subcommand events" -s h -l help -d 'Print help'
complete -c graceexec -n "__fish_graceexec_using_subcommand stop" -l name -d 'Name of the instance (default: the only one running)' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand stop" -l control -d 'Path of its control socket, instead of --name' -r -F
complete -c graceexec -n "__fish_graceexec_using_subcommand stop" -l timeout -d 'How long to wait for it to exit' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand stop" -s h -l help -d 'Print help'
complete -c graceexec -n "__fish_graceexec_using_subcommand upgrade" -l name -d 'Name of the instance (default: the only one running)' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand upgrade" -l control -d 'Path of its control socket, instead of --name' -r -F
complete -c graceexec -n "__fish_graceexec_using_subcommand upgrade" -l binary -d 'The new graceexec binary (default: the file now at the path the instance runs from)' -r -F
complete -c graceexec -n "__fish_graceexec_using_subcommand upgrade" -l timeout -d 'How long to wait for the new image to take over' -r
complete -c graceexec -n "__fish_graceexec_using_subcommand upgrade" -s h -l help -d 'Print help'
complete -c graceexec -n "__fish_graceexec_using_subcommand list" -l json -d 'A JSON array of their status objects'
complete -c graceexec -n "__fish_graceexec_using_subcommand list" -s h -l help -d 'Print help'
complete -c graceexec -n "__fish_graceexec_using_subcommand completions" -s h -l help -d 'Print help'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "reload" -d 'Reload a running instance and wait for the outcome (exit 0: the new generation is ready; 1: the reload failed and the old one keeps serving; 3: no such instance; 4: no answer within --timeout)'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "promote" -d 'Give a canary every new connection; the previous generation drains'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "rollback" -d 'Return every new connection to the previous generation (a canary\'s, or the one --keep-old kept); the newer one drains'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "status" -d 'Show an instance: its sockets, generations and last reload'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "events" -d 'Follow an instance\'s events (reloads, generations, restarts, share changes) as they happen, until it exits'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "stop" -d 'Stop an instance gracefully; returns once it has exited'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "upgrade" -d 'Replace graceexec itself in place: the same pid, every socket and generation kept, nothing restarted'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "list" -d 'List the running instances of this user'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "completions" -d 'Print a shell completion script'
complete -c graceexec -n "__fish_graceexec_using_subcommand help; and not __fish_seen_subcommand_from reload promote rollback status events stop upgrade list completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
