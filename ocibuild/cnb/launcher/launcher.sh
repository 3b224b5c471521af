#!/bin/sh
# ocibuild's CNB launcher: what the lifecycle's /cnb/lifecycle/launcher does at container start,
# in POSIX sh so that an image built without the lifecycle still applies its buildpacks' launch
# environment under any runtime (podman, runc, Kubernetes). It reads the process table that the
# exporter writes next to metadata.toml (<layers>/config/launch.sh), because sh cannot parse TOML.

cnb_die() {
	printf 'ERROR: launcher: %s\n' "$*" >&2
	exit 1
}

cnb_layers=${CNB_LAYERS_DIR:-/layers}
cnb_app=${CNB_APP_DIR:-/workspace}
cnb_self=$0
cnb_base=${0##*/}

[ -r "$cnb_layers/config/launch.sh" ] || cnb_die "no process table at $cnb_layers/config/launch.sh"
# Defines CNB_DEFAULT_PROCESS, CNB_BUILDPACKS ("<escaped-id> <api>" lines) and cnb_process TYPE,
# which (for a known TYPE) sets cnb_cmd and cnb_args (quoted words), cnb_direct, cnb_workdir,
# cnb_bp (the contributing buildpack's id) and cnb_api (its API; empty: not in the group).
. "$cnb_layers/config/launch.sh"

cnb_nl='
'
cnb_tab='	'

# API versions are <major>.<minor>; is $1 older than $2? An unparseable $1 counts as 0.2, the
# lifecycle's fallback for a buildpack that declares no API.
cnb_api_lt() {
	cnb_x=$1
	case "$cnb_x" in
	[0-9]*.[0-9]*) ;;
	*) cnb_x=0.2 ;;
	esac
	cnb_x1=${cnb_x%%.*} cnb_x2=${cnb_x#*.}
	cnb_x2=${cnb_x2%%.*}
	case "$cnb_x1$cnb_x2" in *[!0-9]*) cnb_x1=0 cnb_x2=2 ;; esac
	cnb_y1=${2%%.*} cnb_y2=${2#*.}
	[ "$cnb_x1" -lt "$cnb_y1" ] || { [ "$cnb_x1" -eq "$cnb_y1" ] && [ "$cnb_x2" -lt "$cnb_y2" ]; }
}

# Append each argument, single-quoted for eval, to cnb_q.
cnb_quote() {
	for cnb_a in "$@"; do
		cnb_r=
		while :; do
			case "$cnb_a" in
			*\'*)
				cnb_r="$cnb_r${cnb_a%%\'*}'\\''"
				cnb_a=${cnb_a#*\'}
				;;
			*)
				cnb_r=$cnb_r$cnb_a
				break
				;;
			esac
		done
		cnb_q="$cnb_q '$cnb_r'"
	done
}

cnb_platform=${CNB_PLATFORM_API:-0.3}
case "$cnb_platform" in
*[!0-9.]* | .* | *. | *.*.*) cnb_die "platform API $cnb_platform is not <major>.<minor>" ;;
*.*) ;;
*) cnb_die "platform API $cnb_platform is not <major>.<minor>" ;;
esac

# The default process (the lifecycle's defaultProcessType). Platform API < 0.4: CNB_PROCESS_TYPE,
# else web. Later: the process named like the launcher's argv[0] (/cnb/process/<type>); invoked
# as "launcher" there is none and the arguments are the command.
cnb_type=
if cnb_api_lt "$cnb_platform" 0.4; then
	cnb_want=${CNB_PROCESS_TYPE:-web}
	if [ $# -eq 0 ]; then
		cnb_process "$cnb_want" || cnb_die "process type $cnb_want was not found"
		cnb_type=$cnb_want
	elif [ $# -eq 1 ] && cnb_process "$1"; then
		cnb_type=$1
		shift
	fi
	cnb_legacy=true
else
	if [ -n "${CNB_PROCESS_TYPE:-}" ]; then
		printf 'Warning: CNB_PROCESS_TYPE is not supported in Platform API %s\n' "$cnb_platform" >&2
		printf "Warning: Run with ENTRYPOINT '%s' to invoke the '%s' process type\n" \
			"$CNB_PROCESS_TYPE" "$CNB_PROCESS_TYPE" >&2
	fi
	cnb_want=$cnb_base
	case "$cnb_want" in ?*.*) cnb_want=${cnb_want%.*} ;; esac
	cnb_process "$cnb_want" && cnb_type=$cnb_want
	cnb_legacy=false
fi

# The process's environment is the image's, less the variables that only steer the launcher.
cnb_path=
cnb_ifs=$IFS
IFS=:
for cnb_p in ${PATH:-}; do
	case "$cnb_p" in
	/cnb/process | /cnb/lifecycle) ;;
	*) cnb_path=${cnb_path:+$cnb_path:}$cnb_p ;;
	esac
done
IFS=$cnb_ifs
PATH=$cnb_path
export PATH
unset CNB_LAYERS_DIR CNB_APP_DIR CNB_PROCESS_TYPE CNB_PLATFORM_API CNB_DEPRECATION_MODE

# The argv: the process's command and args combined with the user's arguments as the lifecycle's
# ProcessFor does, or (no default process) the user's arguments alone.
if [ -n "$cnb_type" ]; then
	cnb_q=
	cnb_quote "$@"
	cnb_user=$cnb_q
	cnb_nuser=$#
	eval "set -- $cnb_cmd"
	if [ "$cnb_legacy" = true ] || [ "$cnb_nuser" -eq 0 ]; then
		cnb_argv="$cnb_cmd $cnb_args"
	elif cnb_api_lt "$cnb_platform" 0.10; then
		cnb_argv="$cnb_cmd $cnb_args $cnb_user"
	elif [ $# -gt 1 ]; then
		# A command with arguments (buildpack API >= 0.9): those always stay; user args replace args.
		cnb_argv="$cnb_cmd $cnb_user"
	elif [ -z "$cnb_api" ]; then
		cnb_die "failed to find buildpack for process $cnb_type with buildpack ID $cnb_bp"
	elif cnb_api_lt "$cnb_api" 0.9; then
		cnb_argv="$cnb_cmd $cnb_args $cnb_user"
	else
		cnb_argv="$cnb_cmd $cnb_user"
	fi
	eval "set -- $cnb_argv"
elif [ $# -eq 0 ]; then
	cnb_die "when there is no default process a command is required"
elif [ "$1" = "--" ] && [ $# -gt 1 ]; then
	shift
	cnb_direct=true cnb_workdir=
else
	cnb_direct=false cnb_workdir=
fi

# Prepend $1 to the variable named $2 with delimiter $3 (no delimiter when the variable is empty).
cnb_prepend() {
	eval "cnb_cur=\${$2-}"
	if [ -n "$cnb_cur" ]; then export "$2=$1$3$cnb_cur"; else export "$2=$1"; fi
}

cnb_append() {
	eval "cnb_cur=\${$2-}"
	if [ -n "$cnb_cur" ]; then export "$2=$cnb_cur$3$1"; else export "$2=$1"; fi
}

# Apply one env directory with the lifecycle's suffix rules. $2: the default action (API >= 0.5:
# override; older buildpacks: prepend with the path separator).
cnb_env_dir() {
	[ -d "$1" ] || return 0
	for cnb_f in "$1"/*; do
		[ -f "$cnb_f" ] || continue
		cnb_n=${cnb_f##*/}
		case "$cnb_n" in
		*.delim) continue ;;
		*.append) cnb_act=append cnb_n=${cnb_n%.append} ;;
		*.prepend) cnb_act=prepend cnb_n=${cnb_n%.prepend} ;;
		*.override) cnb_act=override cnb_n=${cnb_n%.override} ;;
		*.default) cnb_act=default cnb_n=${cnb_n%.default} ;;
		*) cnb_act=$2 ;;
		esac
		case "$cnb_n" in
		'' | [0-9]* | *[!A-Za-z0-9_]*) continue ;; # not a name sh can export
		esac
		# The file's exact bytes, trailing newlines included (as the lifecycle reads them).
		cnb_v=$(cat "$cnb_f" && printf x) || cnb_die "cannot read $cnb_f"
		cnb_v=${cnb_v%x}
		cnb_d=
		if [ -f "$1/$cnb_n.delim" ]; then
			cnb_d=$(cat "$1/$cnb_n.delim" && printf x)
			cnb_d=${cnb_d%x}
		fi
		case "$cnb_act" in
		override) export "$cnb_n=$cnb_v" ;;
		default)
			eval "cnb_cur=\${$cnb_n-}"
			[ -n "$cnb_cur" ] || export "$cnb_n=$cnb_v"
			;;
		prepend) cnb_prepend "$cnb_v" "$cnb_n" "$cnb_d" ;;
		append) cnb_append "$cnb_v" "$cnb_n" "$cnb_d" ;;
		prepend-path) cnb_prepend "$cnb_v" "$cnb_n" "${cnb_d:-:}" ;;
		esac
	done
}

# Buildpacks in group order; in each, layer directories in name order (as the lifecycle lists
# them). One line per layer: "<dir><TAB><default env action><TAB><exec.d: yes|no>".
cnb_each_layer() {
	printf '%s\n' "$CNB_BUILDPACKS" | while read -r cnb_id cnb_bpapi; do
		[ -n "$cnb_id" ] || continue
		[ -d "$cnb_layers/$cnb_id" ] || continue
		if [ -n "$cnb_bpapi" ] && cnb_api_lt "$cnb_bpapi" 0.5; then cnb_def=prepend-path; else cnb_def=override; fi
		# exec.d: buildpack API >= 0.5 (none for a buildpack without an API).
		if [ -n "$cnb_bpapi" ] && ! cnb_api_lt "$cnb_bpapi" 0.5; then cnb_x=yes; else cnb_x=no; fi
		for cnb_l in "$cnb_layers/$cnb_id"/*; do
			[ -d "$cnb_l" ] || continue
			printf '%s\t%s\t%s\n' "$cnb_l" "$cnb_def" "$cnb_x"
		done
	done
}

cnb_layer_list=$(cnb_each_layer)
IFS=$cnb_nl
for cnb_entry in $cnb_layer_list; do
	IFS=$cnb_ifs
	cnb_l=${cnb_entry%%	*}
	cnb_def=${cnb_entry#*	}
	cnb_def=${cnb_def%%	*}
	[ -d "$cnb_l/bin" ] && cnb_prepend "$cnb_l/bin" PATH :
	[ -d "$cnb_l/lib" ] && cnb_prepend "$cnb_l/lib" LD_LIBRARY_PATH :
	cnb_env_dir "$cnb_l/env" "$cnb_def"
	cnb_env_dir "$cnb_l/env.launch" "$cnb_def"
	[ -n "$cnb_type" ] && cnb_env_dir "$cnb_l/env.launch/$cnb_type" "$cnb_def"
done
IFS=$cnb_ifs

cd "$cnb_app" || cnb_die "cannot change to the app directory $cnb_app"

# exec.d (buildpack API >= 0.5), after the env directories and before profile.d: every file in
# each layer's exec.d/ and then exec.d/<type>/ runs in the environment so far, writing TOML
# (KEY = "value" lines) to fd 3; each key then overrides the variable for what follows.
cnb_toml_fail() {
	cnb_die "exec.d $cnb_f: line $cnb_ln: unsupported TOML (only KEY = \"string\" lines): $cnb_line"
}

# cnb_s starts just after an opening '"': decode the basic string into cnb_val, rest in cnb_s.
cnb_toml_basic() {
	cnb_val=
	while :; do
		cnb_chunk=${cnb_s%%[\\\"]*}
		[ "$cnb_chunk" != "$cnb_s" ] || cnb_toml_fail
		cnb_val=$cnb_val$cnb_chunk
		cnb_s=${cnb_s#"$cnb_chunk"}
		case "$cnb_s" in
		\"*)
			cnb_s=${cnb_s#?}
			return 0
			;;
		\\\\*) cnb_val="$cnb_val\\" ;;
		\\\"*) cnb_val="$cnb_val\"" ;;
		\\n*) cnb_val=$cnb_val$cnb_nl ;;
		\\t*) cnb_val=$cnb_val$cnb_tab ;;
		*) cnb_toml_fail ;;
		esac
		cnb_s=${cnb_s#??}
	done
}

# Export every KEY = "value" line of the TOML text $1.
cnb_toml_export() {
	cnb_ln=0
	while IFS= read -r cnb_line || [ -n "$cnb_line" ]; do
		cnb_ln=$((cnb_ln + 1))
		cnb_s=${cnb_line#"${cnb_line%%[! 	]*}"}
		case "$cnb_s" in '' | '#'*) continue ;; esac
		cnb_key=${cnb_s%%[ 	=]*}
		case "$cnb_key" in '' | [0-9]* | *[!A-Za-z0-9_]*) cnb_toml_fail ;; esac
		cnb_s=${cnb_s#"$cnb_key"}
		cnb_s=${cnb_s#"${cnb_s%%[! 	]*}"}
		case "$cnb_s" in =*) cnb_s=${cnb_s#=} ;; *) cnb_toml_fail ;; esac
		cnb_s=${cnb_s#"${cnb_s%%[! 	]*}"}
		case "$cnb_s" in
		'"""'*) cnb_toml_fail ;;
		\"*)
			cnb_s=${cnb_s#?}
			cnb_toml_basic
			;;
		*) cnb_toml_fail ;;
		esac
		cnb_s=${cnb_s#"${cnb_s%%[! 	]*}"}
		case "$cnb_s" in '' | '#'*) ;; *) cnb_toml_fail ;; esac
		export "$cnb_key=$cnb_val"
	done <<CNB_EOF
$1
CNB_EOF
}

cnb_exec_d() { # $1: a directory; runs its files in name order
	[ -d "$1" ] || return 0
	for cnb_f in "$1"/*; do
		[ -e "$cnb_f" ] || [ -L "$cnb_f" ] || continue
		[ -d "$cnb_f" ] && [ ! -L "$cnb_f" ] && continue # as the lifecycle: a symlink is run
		# fd 3 is the command substitution's pipe; the executable's stdout stays the launcher's
		# (through fd 9, saved and restored around the group so the app inherits its own fd 9).
		{ cnb_out=$("$cnb_f" 3>&1 1>&9 9>&-); } 9>&1 || cnb_die "exec.d $cnb_f failed (exit status $?)"
		cnb_toml_export "$cnb_out"
	done
}

IFS=$cnb_nl
for cnb_entry in $cnb_layer_list; do
	IFS=$cnb_ifs
	case "$cnb_entry" in *"	yes") ;; *) continue ;; esac
	cnb_l=${cnb_entry%%	*}
	cnb_exec_d "$cnb_l/exec.d"
	[ -n "$cnb_type" ] && cnb_exec_d "$cnb_l/exec.d/$cnb_type"
done
IFS=$cnb_ifs

if [ "$cnb_direct" = true ]; then
	cd "${cnb_workdir:-$cnb_app}" || cnb_die "cannot change directory to $cnb_workdir"
	exec "$@"
fi

# Non-direct: profile scripts (every layer's profile.d/*, then profile.d/<type>/*, then the app's
# .profile) are sourced, then the command runs through the shell.
IFS=$cnb_nl
for cnb_entry in $cnb_layer_list; do
	IFS=$cnb_ifs
	cnb_l=${cnb_entry%%	*}
	for cnb_f in "$cnb_l"/profile.d/*; do
		[ -f "$cnb_f" ] && . "$cnb_f"
	done
	if [ -n "$cnb_type" ]; then
		for cnb_f in "$cnb_l/profile.d/$cnb_type"/*; do
			[ -f "$cnb_f" ] && . "$cnb_f"
		done
	fi
done
IFS=$cnb_ifs
[ -f "$cnb_app/.profile" ] && . "$cnb_app/.profile"

cd "${cnb_workdir:-$cnb_app}" || cnb_die "cannot change directory to $cnb_workdir"
if [ $# -eq 1 ]; then
	# A script: the whole command is shell code.
	exec /bin/sh -c "$1"
fi
# Tokens: each word is expanded by the shell (variables, command substitution), then executed.
cnb_n=$#
for cnb_t in "$@"; do
	cnb_e=$(eval "printf '%s' \"$cnb_t\"")
	set -- "$@" "$cnb_e"
done
shift "$cnb_n"
exec "$@"
