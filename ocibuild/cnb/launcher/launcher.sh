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
# Defines CNB_DEFAULT_PROCESS, CNB_BUILDPACKS ("<escaped-id> <api>" lines) and cnb_process TYPE.
. "$cnb_layers/config/launch.sh"

# The process: from /cnb/process/<type> (argv[0]), else CNB_PROCESS_TYPE, else the default.
if [ "$cnb_base" != launcher ]; then
	cnb_type=$cnb_base
else
	cnb_type=${CNB_PROCESS_TYPE:-$CNB_DEFAULT_PROCESS}
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

if [ -n "$cnb_type" ]; then
	cnb_process "$cnb_type" || cnb_die "process type $cnb_type was not found"
	# cnb_process set: cnb_argv (quoted words), cnb_direct, cnb_workdir, cnb_bp (escaped id)
	eval "set -- $cnb_argv \"\$@\""
elif [ $# -eq 0 ]; then
	cnb_die "when there is no default process a command is required"
elif [ "$1" = "--" ] && [ $# -gt 1 ]; then
	shift
	cnb_direct=true cnb_workdir= cnb_bp=
else
	cnb_direct=false cnb_workdir= cnb_bp=
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

# Buildpacks in group order; in each, layer directories in name order (as the lifecycle lists them).
cnb_version_lt_05() {
	case "$1" in
	0.[0-4] | 0.[0-4].*) return 0 ;;
	*) return 1 ;;
	esac
}

cnb_each_layer() { # $1: a function called with (layer dir, default action, escaped bp id)
	printf '%s\n' "$CNB_BUILDPACKS" | while read -r cnb_id cnb_api; do
		[ -n "$cnb_id" ] || continue
		[ -d "$cnb_layers/$cnb_id" ] || continue
		if cnb_version_lt_05 "$cnb_api"; then cnb_def=prepend-path; else cnb_def=override; fi
		for cnb_l in "$cnb_layers/$cnb_id"/*; do
			[ -d "$cnb_l" ] || continue
			printf '%s\t%s\n' "$cnb_l" "$cnb_def"
		done
	done
}

cnb_layer_list=$(cnb_each_layer)
cnb_nl='
'
IFS=$cnb_nl
for cnb_entry in $cnb_layer_list; do
	IFS=$cnb_ifs
	cnb_l=${cnb_entry%%	*}
	cnb_def=${cnb_entry#*	}
	[ -d "$cnb_l/bin" ] && cnb_prepend "$cnb_l/bin" PATH :
	[ -d "$cnb_l/lib" ] && cnb_prepend "$cnb_l/lib" LD_LIBRARY_PATH :
	cnb_env_dir "$cnb_l/env" "$cnb_def"
	cnb_env_dir "$cnb_l/env.launch" "$cnb_def"
	[ -n "$cnb_type" ] && cnb_env_dir "$cnb_l/env.launch/$cnb_type" "$cnb_def"
done
IFS=$cnb_ifs

cd "$cnb_app" || cnb_die "cannot change to the app directory $cnb_app"

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
