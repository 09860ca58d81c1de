/* rlguard kernel programs (bcc C): the one compile unit.
 *
 * Rule for every file here: never read a kernel struct through headers.  The
 * headers on a host may belong to another kernel (see docs/install.md), so
 * only tracepoint fields (bcc builds them from tracefs formats), BPF helpers,
 * UAPI contexts (__sk_buff, bpf_sock_addr), packet bytes and user memory are
 * read.
 *
 * Data flow: every record goes to one ring buffer, `events`, submitted
 * without a wake-up; user space drains it on a short timer.  Reserve/output
 * failures are counted per event type in `drops`, successes in `sent`.
 *
 * Files: rlguard.h holds the record layouts (shared with user space), lib/
 * what every hook family uses, and each family has its own file, included
 * below in the order they are defined.  bcc rewrites only the main file it
 * compiles (map calls, tracepoint contexts, program sections), so the loader
 * (monitor/sensor/probes.py, program_text) splices these quoted includes into
 * this file's text before the compile, each once, with #line markers so that
 * compile errors name the file they come from.
 */
#include <uapi/linux/ptrace.h>  /* struct pt_regs: the ptrace register ABI */
#include "rlguard.h"

#include "lib/consts.h"         /* constants, internal miss counters */
#include "lib/maps.bpf.h"       /* ring buffer, counters, state shared across hooks */
#include "lib/emit.bpf.h"       /* emit() and the record header */

#include "exec.bpf.h"           /* sched_process_exec: argv, env tags */
#include "proc.bpf.h"           /* clone, fork, exit_group, signals, exit */
#include "dup.bpf.h"            /* dup2/dup3 onto fds 0-2 */
#include "ipc.bpf.h"            /* AF_UNIX bind/listen/connect: local servers */
#include "sender.bpf.h"         /* who sent a connection's first bytes */
#include "connect.bpf.h"        /* connect() syscall and cgroup/connect4/6 */
#include "tcp_state.bpf.h"      /* sock:inet_sock_set_state */
#include "tls.bpf.h"            /* uprobes on TLS libraries: plaintext (issue 14) */
#include "streams.bpf.h"        /* stream openings, replies (cgroup_skb/ingress), activity */
#include "send_length.bpf.h"    /* sock_send_length: TLS writes to sockets, first senders */
#include "egress.bpf.h"         /* cgroup_skb/egress: first bytes and DNS */
#include "gpu.bpf.h"            /* open/close of GPU device nodes */
