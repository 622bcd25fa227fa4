#!/usr/bin/env bash
# conveyor-remote.sh: the release primitives Conveyor runs on a fleet host over SSH.
#
#   conveyor-remote.sh stage    <app_root> <version> <sha256> <tarball>  verify + unpack; idempotent
#   conveyor-remote.sh activate <app_root> <version>                     atomic switch of <app_root>/current
#   conveyor-remote.sh current  <app_root>                               the current version, or "none"
#   conveyor-remote.sh prune    <app_root> <keep> [<incoming>]           keep the newest <keep> releases
#                                                                        (plus current and previous); remove
#                                                                        leftovers older than an hour
# Layout: <app_root>/releases/<version>/ (complete once .conveyor-sha256 exists),
#         <app_root>/current -> releases/<version>, <app_root>/previous (text: the version before the switch).
# Exit codes: 0 ok, 1 another failure, 2 usage / invalid argument, 3 checksum mismatch, corrupted or
#             unsafe artifact (an absolute or ".." member, a link), 4 unknown version,
#             5 no space left on the device (ENOSPC, or EDQUOT: the disk quota is used up).
# A stage or activate that fails leaves nothing of its own behind (no staging directory, no temporary
# file); the uploaded tarball is the caller's to remove. prune's leftovers: staging directories of a
# stage that was killed, the switch's temporary links, and files in <incoming> (uploads and their .part).
# Every argument is checked against a strict pattern before it is used; nothing is ever eval'ed.
set -euo pipefail
umask 022
export LC_ALL=C

readonly VERSION_RE='^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$'
readonly SHA256_RE='^[0-9a-f]{64}$'
readonly PATH_RE='^[A-Za-z0-9_./~][A-Za-z0-9_./~-]{0,254}$'
readonly KEEP_RE='^[0-9]{1,4}$'
readonly MARKER=.conveyor-sha256
readonly NO_SPACE=5
readonly LEFTOVER_MINUTES=60

usage() {
  cat >&2 <<'USAGE'
usage: conveyor-remote.sh stage    <app_root> <version> <sha256> <tarball>
       conveyor-remote.sh activate <app_root> <version>
       conveyor-remote.sh current  <app_root>
       conveyor-remote.sh prune    <app_root> <keep> [<incoming>]
USAGE
  exit 2
}

die() { # die <exit code> <message>
  echo "conveyor-remote: $2" >&2
  exit "$1"
}

# one_line <text>: the text on one line (" | " between its lines), at most 500 characters.
one_line() {
  local text=${1//$'\n'/ | }
  echo "${text:0:500}"
}

# if_no_space <what> <error output>: exit 5 when the output says the disk is full (or the quota used up).
if_no_space() {
  if [[ $2 == *"No space left on device"* || $2 == *"Disk quota exceeded"* ]]; then
    die "$NO_SPACE" "no space left on device: $1: $(one_line "$2")"
  fi
}

# failed <exit code> <what> <error output>: a full disk is exit 5, whatever else failed is <exit code>.
failed() {
  if_no_space "$2" "$3"
  die "$1" "$2: $(one_line "$3")"
}

# write <path> <text>: write a small file; a full disk is exit 5 (and no half-written file stays).
write() {
  local out
  if ! out=$({ printf '%s\n' "$2" >"$1"; } 2>&1); then
    rm -f -- "$1"
    failed 1 "cannot write $1" "$out"
  fi
}

check_version() {
  [[ $1 =~ $VERSION_RE ]] || die 2 "invalid version '$1': must match $VERSION_RE"
}

check_sha256() {
  [[ $1 =~ $SHA256_RE ]] || die 2 "invalid sha256 '$1': must be 64 lowercase hex digits"
}

# check_path <what> <path>: no "..", no shell metacharacters, no leading "-"; "~/x" means $HOME/x.
check_path() {
  local what=$1 path=$2
  [[ $path =~ $PATH_RE ]] || die 2 "invalid $what '$path': only letters, digits and _ . / ~ - are allowed"
  [[ /$path/ != */../* ]] || die 2 "invalid $what '$path': '..' is not allowed"
  case $path in
    '~') path=$HOME ;;
    '~/'*) path=$HOME/${path#\~/} ;;
    *'~'*) die 2 "invalid $what '$path': '~' is only allowed as the first component" ;;
  esac
  REPLY=$path
}

# current_of <app_root>: the version <app_root>/current points to, or "none".
current_of() {
  local link=$1/current target
  if [[ -L $link ]]; then
    target=$(readlink -- "$link")
    echo "${target##*/}"
  else
    echo none
  fi
}

# check_members <tarball> <name as given>: an artifact is plain files and directories inside its own
# directory. Refuse (exit 3) absolute names, ".." components and links before anything is unpacked:
# tar would strip or skip some of them, but an artifact that carries them was not built by Conveyor.
check_members() {
  local names types name line
  names=$(tar -tzPf "$1" 2>&1) || die 3 "corrupted artifact '$2': $(one_line "$names")"
  while IFS= read -r name; do
    case /$name/ in
      //*) die 3 "unsafe artifact '$2': member '$name' has an absolute path" ;;
      */../*) die 3 "unsafe artifact '$2': member '$name' leaves the release directory ('..')" ;;
    esac
  done <<<"$names"
  types=$(tar -tvzPf "$1" 2>&1) || die 3 "corrupted artifact '$2': $(one_line "$types")"
  while IFS= read -r line; do
    case ${line:0:1} in
      l | h) die 3 "unsafe artifact '$2': links are not allowed ($(one_line "$line"))" ;;
    esac
  done <<<"$types"
}

cmd_stage() {
  (($# == 4)) || usage
  check_path app_root "$1"; local app_root=$REPLY
  check_version "$2"; local version=$2
  check_sha256 "$3"; local sha=$3
  check_path tarball "$4"; local tarball=$REPLY
  local releases=$app_root/releases
  local target=$releases/$version

  if [[ -f $target/$MARKER ]]; then
    local have
    have=$(<"$target/$MARKER")
    if [[ $have == "$sha" ]]; then
      echo "already staged $version"
      return 0
    fi
    die 3 "version $version is already staged with sha256 $have, not $sha: versions are immutable"
  fi
  [[ -f $tarball ]] || die 2 "tarball '$4' does not exist or is not a regular file"
  local actual
  actual=$(sha256sum -- "$tarball") || die 3 "cannot read tarball '$4'"
  actual=${actual%% *}
  [[ $actual == "$sha" ]] || die 3 "checksum mismatch for '$4': expected $sha, got $actual"

  check_members "$tarball" "$4"

  local out
  out=$(mkdir -p -- "$releases" 2>&1) || failed 1 "cannot create $releases" "$out"
  out=$(mktemp -d -- "$releases/.staging-$version.XXXXXX" 2>&1) || failed 1 "cannot create a staging directory" "$out"
  STAGING=$out
  trap 'if [[ -n ${STAGING:-} ]]; then rm -rf -- "$STAGING"; fi' EXIT
  # tar's errors are kept in memory: on a full disk there is no room for them in a file.
  if ! out=$(tar -xzf "$tarball" -C "$STAGING" --no-same-owner 2>&1); then
    if_no_space "unpacking '$4' into $releases" "$out"
    die 3 "corrupted artifact '$4': $(one_line "$out")"
  fi
  chmod 755 -- "$STAGING"
  write "$STAGING/$MARKER" "$sha"

  if [[ -e $target ]]; then
    # A directory without the marker is an interrupted copy made by hand: replace it.
    [[ -f $target/$MARKER ]] || rm -rf -- "$target"
  fi
  if ! mv -T -- "$STAGING" "$target" 2>/dev/null; then
    # Another stage of the same version won the race: fine if it staged the same bytes.
    if [[ -f $target/$MARKER && $(<"$target/$MARKER") == "$sha" ]]; then
      echo "already staged $version"
      return 0
    fi
    die 3 "cannot move the staged release into $target"
  fi
  STAGING=
  echo "staged $version"
}

cmd_activate() {
  (($# == 2)) || usage
  check_path app_root "$1"; local app_root=$REPLY
  check_version "$2"; local version=$2
  [[ -f $app_root/releases/$version/$MARKER ]] || die 4 "unknown version $version: not staged in $1/releases"
  local old
  old=$(current_of "$app_root")
  if [[ $old == "$version" ]]; then
    echo "unchanged $version"
    return 0
  fi
  local tmp=$app_root/.previous.$$ out
  write "$tmp" "$old"
  mv -f -- "$tmp" "$app_root/previous"
  tmp=$app_root/.current.$$
  rm -f -- "$tmp"
  if ! out=$(ln -s -- "releases/$version" "$tmp" 2>&1); then
    rm -f -- "$tmp"
    failed 1 "cannot link $version" "$out"
  fi
  mv -T -- "$tmp" "$app_root/current"
  echo "switched $old -> $version"
}

cmd_current() {
  (($# == 1)) || usage
  check_path app_root "$1"
  current_of "$REPLY"
}

# remove_leftovers <app_root> [<incoming>]: what interrupted stages, switches and uploads left, once it
# is older than an hour (so never a step in progress); prints one line per path and sets LEFTOVERS.
remove_leftovers() {
  local app_root=$1 incoming=${2:-} path
  LEFTOVERS=0
  local -a found=()
  if [[ -d $app_root/releases ]]; then
    while IFS= read -r -d '' path; do found+=("$path"); done < <(
      find "$app_root/releases" -mindepth 1 -maxdepth 1 -name '.staging-*' -mmin +"$LEFTOVER_MINUTES" -print0)
  fi
  if [[ -d $app_root ]]; then
    while IFS= read -r -d '' path; do found+=("$path"); done < <(
      find "$app_root" -mindepth 1 -maxdepth 1 \( -name '.current.*' -o -name '.previous.*' \) \
        -mmin +"$LEFTOVER_MINUTES" -print0)
  fi
  if [[ -n $incoming && -d $incoming ]]; then
    while IFS= read -r -d '' path; do found+=("$path"); done < <(
      find "$incoming" -mindepth 1 -maxdepth 1 \( -type f -o -type l \) -mmin +"$LEFTOVER_MINUTES" -print0)
  fi
  for path in "${found[@]}"; do
    rm -rf -- "$path" && echo "removed leftover $path" && LEFTOVERS=$((LEFTOVERS + 1))
  done
  return 0
}

cmd_prune() {
  (($# == 2 || $# == 3)) || usage
  check_path app_root "$1"; local app_root=$REPLY
  [[ $2 =~ $KEEP_RE ]] || die 2 "invalid keep '$2': must be a number"
  local keep=$((10#$2)) incoming=
  if (($# == 3)); then
    check_path incoming "$3"; incoming=$REPLY
  fi
  local releases=$app_root/releases
  remove_leftovers "$app_root" "$incoming"
  local leftovers=""
  ((LEFTOVERS == 0)) || leftovers=", removed $LEFTOVERS leftover(s)"
  [[ -d $releases ]] || { echo "nothing to prune$leftovers"; return 0; }
  local current previous=none
  current=$(current_of "$app_root")
  [[ -f $app_root/previous ]] && previous=$(<"$app_root/previous")

  local kept=0 removed=0 line version
  # Complete releases, newest staged first (the marker is written last).
  while IFS= read -r line; do
    version=${line#* }
    version=${version%/*}
    version=${version##*/}
    [[ $version =~ $VERSION_RE ]] || continue
    if [[ $version == "$current" || $version == "$previous" ]]; then
      continue
    fi
    if ((kept < keep)); then
      kept=$((kept + 1))
      continue
    fi
    rm -rf -- "${releases:?}/$version"
    echo "pruned $version"
    removed=$((removed + 1))
  done < <(find "$releases" -mindepth 2 -maxdepth 2 -name "$MARKER" -printf '%T@ %p\n' | sort -rn)
  echo "kept $kept (+ current $current, previous $previous), pruned $removed$leftovers"
}

(($# >= 1)) || usage
command=$1
shift
case $command in
  stage) cmd_stage "$@" ;;
  activate) cmd_activate "$@" ;;
  current) cmd_current "$@" ;;
  prune) cmd_prune "$@" ;;
  -h | --help | help) usage ;;
  *) echo "conveyor-remote: unknown command '$command'" >&2; usage ;;
esac
