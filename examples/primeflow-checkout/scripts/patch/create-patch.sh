#!/bin/bash
# PrimeFlow — cria um patch em patches/vX.Y.Z
# Uso: ./scripts/patch/create-patch.sh 3.0.0

VERSION=$1
PROJECT_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
PATCH_DIR="$PROJECT_DIR/patches/v$VERSION"

RED='\033[0;31m'
GREEN='\033[0;32m'
YELLOW='\033[1;33m'
NC='\033[0m'

if [ -z "$VERSION" ]; then
    echo -e "${RED}Erro: informe a versão. Ex: ./create-patch.sh 3.0.0${NC}"
    exit 1
fi

cd "$PROJECT_DIR"

echo -e "${GREEN}=== Criando patch v$VERSION ===${NC}"

# Atualiza o arquivo VERSION
echo "$VERSION" > VERSION

mkdir -p "$PATCH_DIR"

echo "Empacotando arquivos..."
tar -czf "$PATCH_DIR/patch-v$VERSION.tar.gz" \
    --exclude=node_modules \
    --exclude=.git \
    --exclude=dist \
    --exclude=patches \
    --exclude=uploads \
    --exclude='*.log' \
    .

echo "Gerando checksum..."
cd "$PATCH_DIR"
md5sum "patch-v$VERSION.tar.gz" > checksum.md5
cd "$PROJECT_DIR"

# Changelog da versão
cp CHANGELOG.md "$PATCH_DIR/CHANGELOG.md"

# Schema atual do banco
if [ -n "$DATABASE_URL" ]; then
    pg_dump --schema-only "${DATABASE_URL%%\?*}" > "$PATCH_DIR/schema.sql" 2>/dev/null \
        || echo -e "${YELLOW}Aviso: não foi possível gerar schema.sql${NC}"
fi

cat > "$PATCH_DIR/README.md" <<README
# Patch v$VERSION

Gerado em $(date '+%d/%m/%Y %H:%M')

Para aplicar:

    make apply-patch VERSION=$VERSION
README

echo -e "${GREEN}Patch criado em $PATCH_DIR${NC}"
ls -lh "$PATCH_DIR"
