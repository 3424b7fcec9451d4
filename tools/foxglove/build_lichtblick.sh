#!/usr/bin/env bash
# Builds Lichtblick's web app (Foxglove Studio's open-source fork), which screenshot.py opens headless.
#   tools/foxglove/build_lichtblick.sh LICHTBLICK_CHECKOUT OUT_DIR
# LICHTBLICK_CHECKOUT: a clone of https://github.com/Lichtblick-Suite/lichtblick (the README's picture: v1.10.8,
# commit 9554e1e). Needs node >= 20 with corepack, and the npm registry; about 11 minutes to install and 7 to build
# on 2 cores. Not part of mpq: it makes the README's picture.
set -euo pipefail
checkout=$(realpath "$1")
out=$(realpath -m "$2")
cd "$checkout"

# A clone without Git LFS holds pointer files in place of the yarn plugins and the fonts. The plugins are not
# needed to install or build; the app waits for its fonts, so take the same ones from npm (Inter 3.19's web
# files are byte for byte Lichtblick's; IBM Plex Mono's complete files stand in for its subsets).
fonts=packages/suite-base/src/styles/assets
if head -c 40 "$fonts/Inter-Regular.woff2" | grep -q "git-lfs"; then
    sed -i '/^plugins:/,/^$/d' .yarnrc.yml
    grep -q npmRegistryServer .yarnrc.yml || echo 'npmRegistryServer: "https://registry.npmjs.org"' >> .yarnrc.yml
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack -q inter-ui@3.19.3 @ibm/plex-mono@1.1.0 >/dev/null && mkdir inter plex \
        && tar xzf inter-ui-3.19.3.tgz -C inter && tar xzf ibm-plex-mono-1.1.0.tgz -C plex)
    for style in Regular Italic Medium MediumItalic SemiBold SemiBoldItalic; do
        cp "$tmp/inter/package/Inter (web)/Inter-$style.woff2" "$fonts/Inter-$style.woff2"
    done
    cp "$tmp/plex/package/fonts/complete/woff2/IBMPlexMono-Regular.woff2" "$fonts/PlexMono.woff2"
    for style in Bold Italic BoldItalic; do
        cp "$tmp/plex/package/fonts/complete/woff2/IBMPlexMono-$style.woff2" "$fonts/PlexMono-$style.woff2"
    done
    rm -rf "$tmp"
fi

# Lichtblick pins yarn 3.6.3 through corepack; corepack fetches it from the npm registry.
export COREPACK_HOME="$checkout/.corepack" COREPACK_NPM_REGISTRY=https://registry.npmjs.org
export COREPACK_ENABLE_DOWNLOAD_PROMPT=0 PATH="$checkout/.corepack/bin:$PATH"
export ELECTRON_SKIP_BINARY_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
mkdir -p "$checkout/.corepack/bin" && corepack enable --install-directory "$checkout/.corepack/bin"
yarn install
NODE_OPTIONS=--max-old-space-size=8192 yarn web:build:prod
rm -rf "$out" && cp -a web/.webpack "$out"
echo "Lichtblick's web app is in $out"
