# Sourced by the scripts here. `need_debian CMD PACKAGE …` (pairs): installs each PACKAGE whose
# CMD is not on PATH (a CMD with a '/' is a glob that must match a file), with apt-get, as root
# or through sudo.
need_debian() {
    local missing=()
    while (($# >= 2)); do
        if [[ $1 == */* ]]; then
            compgen -G "$1" >/dev/null || missing+=("$2")
        else
            command -v "$1" >/dev/null || missing+=("$2")
        fi
        shift 2
    done
    ((${#missing[@]})) || return 0
    echo "$(basename "$0"): installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
